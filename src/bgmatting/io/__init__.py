"""Readers and writers for images (and, later, video)."""

from .images import IMAGE_SUFFIXES, image_size, is_image_path, list_images, read_image, to_uint, write_image

__all__ = ["IMAGE_SUFFIXES", "image_size", "is_image_path", "list_images", "read_image", "to_uint", "write_image"]
