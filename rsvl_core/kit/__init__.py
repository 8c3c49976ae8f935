"""The kit under everything: errors, progress callbacks, atomic writes, image files, tiling and its one
blender, scene-keyed noise, devices and precisions, lazy package exports."""
