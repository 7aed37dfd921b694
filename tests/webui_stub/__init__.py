"""A small stand-in for the AUTOMATIC1111 WebUI v1.10.1 host API, for CI.

``modules/`` here mirrors the names and signatures of the real modules that
sd-webui-dato touches (each file cites its original in
``AUTOMATIC1111/stable-diffusion-webui`` at tag v1.10.1, commit 82a973c0);
the processing loop follows ``modules/processing.py`` call for call, with a
toy Euler sampler and a real ldm UNet (random weights) as the model.
``harness`` wires it together for the tests.
"""
