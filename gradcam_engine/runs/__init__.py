"""CAM runs on FiftyOne collections: ``compute`` (``compute_cams``), the run
lifecycle (``cam_runs``), turning a batch into field values (``batch_fields``),
heatmap storage (``storage``) and field names (``naming``, the only module here
without FiftyOne). Import the modules directly; this package imports nothing, so
that ``naming`` stays light."""
