"""The web layer: app assembly (``app``), routes by area (``routes``), access control (``security``), request
logging (``observability``) and the one place that renders RFC 9457 problems (``errors``). It holds no maths: it
validates, calls the runtime and renders."""
