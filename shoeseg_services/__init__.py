"""What ShoeSeg's services share, below the backend and the worker and above the model core: the settings
(read once), the image fetcher and its cache (every image source, the SSRF rules), the one Label Studio client
(``ls_api``) and labeling-config reader (``ls_config``), what is queued when (``queues``: training rounds and
their leases in ``trigger``, training in idle time in ``idle_training``, pushes and live acceptance in
``predict_queue``), the model registry and its local and S3 stores, and the one prediction pipeline
(``predictions``). Network, queue and storage code lives here; the model core (:mod:`shoeseg`) has none."""
