"""Readers and writers for images (and, later, video)."""

from .atomic import atomic_path, atomic_write_bytes, atomic_write_text
from .images import IMAGE_SUFFIXES, image_size, is_image_path, list_images, read_image, to_uint, write_image

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "IMAGE_SUFFIXES", "image_size", "is_image_path", "list_images", "read_image", "to_uint", "write_image"]
