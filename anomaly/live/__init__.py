"""Live cameras on Ray Serve: readers -> batched backbone -> per-camera causal head -> alarms (docs/live.md).

- :mod:`anomaly.live.readers`: one camera reader (torch-free), states, reconnect with backoff;
- :mod:`anomaly.live.backbone`: the batched backbone deployment;
- :mod:`anomaly.live.scorer`: the head on a trailing window, alarms opened and closed as clips arrive;
- :mod:`anomaly.live.app`: the ingress deployment (HTTP API) and :func:`~anomaly.live.app.build_app`;
- :mod:`anomaly.live.sinks`: Parquet part files, webhook, server-sent events;
- :mod:`anomaly.live.masking`: credentials in URLs masked, in one place;
- :mod:`anomaly.live.demo`: the toy checkpoint and recording of ``ray_jobs.live --demo``.

Nothing is imported here, so a reader process imports PyAV and numpy, not torch or Serve.
"""
