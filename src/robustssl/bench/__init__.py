"""The main job: spec -> plan -> runner -> store -> report (``robustssl bench``, ``robustssl report``)."""
