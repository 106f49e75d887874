"""Redaction: finding and hiding faces (and whatever an investigator marks) in evidence video.

The entry point is ``redaction.pipeline.redact_clip``; nothing is imported here so that the
job and API modules can load without OpenCV.
"""
