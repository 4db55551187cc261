//! QR images of otpauth URIs: a `size`×`size` greyscale PNG, base64-encoded, as Vault's
//! `barcode` field carries it. The QR matrix comes from the `qrcode` crate (error
//! correction M, as Vault); this module only scales it to pixels, with a quiet zone.

use qrcode::{Color, EcLevel, QrCode};

/// Modules of white border the QR specification asks for around the code.
const QUIET: usize = 4;
/// Pixels per module at the least: at one, decoders (and cameras) lose the grid.
const MIN_SCALE: usize = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QrError {
    #[error("the text is too long for a QR code")]
    TooLong,
    #[error("qr_size {size} is too small: this code needs at least {min} pixels")]
    TooSmall { size: u32, min: u32 },
    #[error("PNG encoding failed: {0}")]
    Png(String),
}

/// The smallest size that shows `text` with [`MIN_SCALE`] pixels per module.
pub fn min_size(text: &str) -> Result<u32, QrError> {
    let code =
        QrCode::with_error_correction_level(text, EcLevel::M).map_err(|_| QrError::TooLong)?;
    Ok(((code.width() + 2 * QUIET) * MIN_SCALE) as u32)
}

/// A `size`×`size` PNG of `text`, base64 (standard alphabet, padded).
pub fn png_base64(text: &str, size: u32) -> Result<String, QrError> {
    let code =
        QrCode::with_error_correction_level(text, EcLevel::M).map_err(|_| QrError::TooLong)?;
    let modules = code.width();
    let total = modules + 2 * QUIET;
    let size_px = size as usize;
    // A whole number of pixels per module, centred: scanners dislike uneven modules.
    let scale = size_px / total;
    if scale < MIN_SCALE {
        return Err(QrError::TooSmall {
            size,
            min: (total * MIN_SCALE) as u32,
        });
    }
    let offset = (size_px - total * scale) / 2 + QUIET * scale;
    let colors = code.to_colors();
    let mut pixels = vec![255u8; size_px * size_px];
    for my in 0..modules {
        for mx in 0..modules {
            if colors[my * modules + mx] == Color::Dark {
                for y in 0..scale {
                    let row = (offset + my * scale + y) * size_px;
                    let start = row + offset + mx * scale;
                    pixels[start..start + scale].fill(0);
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, size, size);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| QrError::Png(e.to_string()))?;
        w.write_image_data(&pixels)
            .map_err(|e| QrError::Png(e.to_string()))?;
    }
    Ok(data_encoding::BASE64.encode(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_has_the_asked_size_and_too_small_is_refused() {
        let text = "otpauth://totp/vault:e?secret=JBSWY3DPEHPK3PXP";
        let b64 = png_base64(text, 200).unwrap();
        let png = data_encoding::BASE64.decode(b64.as_bytes()).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let reader = dec.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (200, 200));
        let min = min_size(text).unwrap();
        assert!(png_base64(text, min).is_ok());
        assert_eq!(
            png_base64(text, min - 1),
            Err(QrError::TooSmall { size: min - 1, min })
        );
    }
}
