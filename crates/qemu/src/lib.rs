//! QEMU's own machinery, used rather than rewritten: `qemu-img` inspects images
//! and makes copy-on-write overlays.

pub mod img;
