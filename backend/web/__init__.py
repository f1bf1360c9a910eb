"""The web process: the Flask app speaking Label Studio's ML-backend protocol (/health, /setup, /predict,
/webhook, /metrics) and the bulk routes (/jobs). It never imports torch: predictions run in workers, reached
by dotted path through the dispatcher (RQ in queue mode, a thread pool in embedded mode)."""
