"""Readers and writers for images and video; atomic file creation."""

from .atomic import atomic_path, atomic_write_bytes, atomic_write_text, check_writable_folder
from .images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ImageDecodeError,
    ImageTooLargeError,
    check_max_pixels,
    check_pixels,
    decode_image,
    image_size,
    is_image_path,
    list_images,
    read_image,
    to_uint,
    write_image,
)

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "ImageDecodeError", "ImageTooLargeError", "atomic_path",
           "atomic_write_bytes", "atomic_write_text", "check_max_pixels", "check_pixels", "check_writable_folder",
           "decode_image", "image_size", "is_image_path", "list_images", "read_image",
           "to_uint", "write_image"]
