"""How env replicas are hosted: the `EnvBackend` protocol (protocol.py), backends by name
(registry.py), the one `Replica` life cycle they all run (replica.py), and the transports: worker
processes (process.py, worker.py), the event loop (loop.py), C++ vector engines (engine.py) and Ray
actors (ray_actors.py); hosted.py is what the process and Ray backends share. child_env.py hosts the
one env `eval` plays, in a process of its own."""
