"""The ASGI application: stratum 0, upload API, notification gateway, admin routes, metrics."""
