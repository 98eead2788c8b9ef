"""What a load run sends: open-loop profiles (``profiles``) and the generator that keeps
their schedule (``generator``), closed-loop HTTP clients (``http_load``), request bodies
(``payloads``), the generator's own ceiling on this machine (``ceiling``), and the same
profiles for Locust (``locustfile``, ``locust_profile``)."""
