"""tagclip-studio's service side, split by what it imports (a test keeps it so):

* `backend` itself (this package, minus `backend.web`) is the core every process imports: settings, label
  config -> plan and model_version (`resolve`), converters, the queue payloads (`contracts`), image fetching,
  Label Studio auth and client, worker presence, Redis key names (`keys`) and bulk planning, state, ledger
  and status (`bulk`). It imports neither flask nor torch.
* `backend.web` is the web process (Flask): routes and the dispatcher. It never imports torch.
* `worker` (a package of its own) is everything that runs in workers: the engine, the job functions, the
  bulk chunk runner and its write-back. It never imports flask.
"""
