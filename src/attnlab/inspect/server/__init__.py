"""The local attention viewer: a Starlette app bound to 127.0.0.1 that checks the Host header
(``app``), its pages and pictures exported to files (``export``), and the limits that keep one
request from taking the machine (``limits``). Nothing is imported here.
"""
