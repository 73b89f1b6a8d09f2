"""The i-PI engine side: the socket server (``mlip-server``), the in-process PES (``<ffdirect>``),
the experiment launcher (``mlip-run``) and the demo."""
