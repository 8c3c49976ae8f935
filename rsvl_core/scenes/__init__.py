"""Scenes: GeoTIFF in and out with georeferencing and masks (geo.py), where a scene comes from and where its
result goes (sources.py), and large scenes processed in windows (windows.py)."""
