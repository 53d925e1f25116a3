//! The host's files as the machine's images.

use std::path::Path;

use ftvm_board::{BoardError, Image, ImageSource};

/// The host's file system as an [`ImageSource`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HostFiles;

impl ImageSource for HostFiles {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// Read the image at `path`.
pub fn load(path: &Path) -> Result<Image, BoardError> {
    Image::load(path, &HostFiles)
}
