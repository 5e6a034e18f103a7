"""Small applications that run on testbed hosts (``python -m testbed.apps.<name>``).

- :mod:`testbed.apps.echo`: answers JSON naming service, version, instance, the Host it
  saw and the request headers (the mesh's ``builtin:echo``; also the tests' upstream).
  aiohttp.
- :mod:`testbed.apps.website`: a static page standing in for a public web site (the
  tutorial's gwadvnet20.github.io), with a JSON-lines request log. Standard library only.

Nothing is imported here, so each app needs only its own dependencies.
"""
