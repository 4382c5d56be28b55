r"""The panels of the bitnet-obs dashboard, one module per row, as ``build_dashboard.py`` lays
them out: each row module's ``panels()`` lists its :class:`~dashboard_panels.panel.Panel`\ s in
order, their PromQL written out where a reviewer reads it; :mod:`dashboard_panels.panel` has
the panel's shape, its Grafana JSON and the selectors the template variables make.
"""
