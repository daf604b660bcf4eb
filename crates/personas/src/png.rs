//! The PNG chunks Character Cards live in: reading `tEXt` / `iTXt` text
//! chunks (PNG spec §11.3.4), and writing a card into a PNG, either a given
//! image or a plain square in the persona's colour.
//!
//! Generated images use stored (uncompressed) deflate blocks, so no
//! compression library is needed; checksums (CRC-32, Adler-32) are computed
//! here and checked on read.

use crate::PersonaError;

const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// Side of generated images, in pixels.
const SIDE: usize = 64;

fn err(why: impl Into<String>) -> PersonaError {
    PersonaError::Png(why.into())
}

/// Whether `bytes` start like a PNG.
pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(&SIGNATURE)
}

/// One chunk: type and data.
struct Chunk<'a> {
    ty: [u8; 4],
    data: &'a [u8],
}

/// Splits a PNG into chunks, checking lengths and CRCs; stops after `IEND`.
fn chunks(bytes: &[u8]) -> Result<Vec<Chunk<'_>>, PersonaError> {
    if !is_png(bytes) {
        return Err(err("not a PNG file (bad signature)"));
    }
    let mut out = Vec::new();
    let mut at = SIGNATURE.len();
    loop {
        let head = bytes
            .get(at..at + 8)
            .ok_or_else(|| err("truncated (no IEND chunk)"))?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let ty = [head[4], head[5], head[6], head[7]];
        let data = bytes
            .get(at + 8..at + 8 + len)
            .ok_or_else(|| err(format!("chunk {} runs past the end", ascii(&ty))))?;
        let crc = bytes
            .get(at + 8 + len..at + 12 + len)
            .ok_or_else(|| err("truncated chunk CRC"))?;
        if u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) != crc32(&[&ty, data]) {
            return Err(err(format!("chunk {} has a bad CRC", ascii(&ty))));
        }
        out.push(Chunk { ty, data });
        at += 12 + len;
        if &ty == b"IEND" {
            return Ok(out);
        }
    }
}

fn ascii(ty: &[u8; 4]) -> String {
    String::from_utf8_lossy(ty).into_owned()
}

/// The text chunks of a PNG as (keyword, text): `tEXt` (Latin-1) and
/// uncompressed `iTXt` (UTF-8).
pub fn text_chunks(bytes: &[u8]) -> Result<Vec<(String, String)>, PersonaError> {
    let mut out = Vec::new();
    for c in chunks(bytes)? {
        match &c.ty {
            b"tEXt" => {
                let Some(nul) = c.data.iter().position(|&b| b == 0) else {
                    continue;
                };
                let latin1 = |b: &[u8]| b.iter().map(|&c| c as char).collect::<String>();
                out.push((latin1(&c.data[..nul]), latin1(&c.data[nul + 1..])));
            }
            b"iTXt" => {
                // keyword \0 compression-flag method lang \0 translated \0 text
                let d = c.data;
                let Some(k) = d.iter().position(|&b| b == 0) else {
                    continue;
                };
                if d.get(k + 1) != Some(&0) {
                    continue; // compressed iTXt: not used by card tools
                }
                let rest = d.get(k + 3..).unwrap_or_default();
                let mut parts = rest.splitn(3, |&b| b == 0);
                let (_, _, Some(text)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                out.push((
                    String::from_utf8_lossy(&d[..k]).into_owned(),
                    String::from_utf8_lossy(text).into_owned(),
                ));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `image` (a PNG) with its `tEXt` chunks named in `texts` replaced by
/// those (ASCII text, as base64 card payloads are), placed before `IEND`.
pub fn with_texts(image: &[u8], texts: &[(&str, &str)]) -> Result<Vec<u8>, PersonaError> {
    let mut out = SIGNATURE.to_vec();
    for c in chunks(image)? {
        if &c.ty == b"IEND" {
            for (k, t) in texts {
                let mut d = k.as_bytes().to_vec();
                d.push(0);
                d.extend_from_slice(t.as_bytes());
                put_chunk(&mut out, b"tEXt", &d);
            }
        } else if &c.ty == b"tEXt" || &c.ty == b"iTXt" {
            let key = c.data.split(|&b| b == 0).next().unwrap_or_default();
            if texts.iter().any(|(k, _)| k.as_bytes() == key) {
                continue; // replaced
            }
        }
        put_chunk(&mut out, &c.ty, c.data);
    }
    Ok(out)
}

/// A plain `SIDE`×`SIDE` RGB square of `rgb`.
pub fn square(rgb: [u8; 3]) -> Vec<u8> {
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(SIDE as u32).to_be_bytes());
    ihdr.extend_from_slice(&(SIDE as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
                                              // Each scanline: filter type 0 (none), then the pixels.
    let line: Vec<u8> = std::iter::once(0).chain(rgb.repeat(SIDE)).collect();
    let raw = line.repeat(SIDE);
    let mut out = SIGNATURE.to_vec();
    put_chunk(&mut out, b"IHDR", &ihdr);
    put_chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    put_chunk(&mut out, b"IEND", &[]);
    out
}

fn put_chunk(out: &mut Vec<u8>, ty: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(ty);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[ty, data]).to_be_bytes());
}

/// A zlib stream of stored deflate blocks (RFC 1950/1951).
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(0xFFFF).collect();
    for (i, b) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let n = b.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// CRC-32 (ISO-HDLC, as PNG uses) over the concatenation of `parts`.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for p in parts {
        for &byte in *p {
            c ^= byte as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_spec_check_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    }

    #[test]
    fn texts_round_trip_and_replace() {
        let png = with_texts(&square([1, 2, 3]), &[("chara", "abc"), ("other", "x")]).expect("png");
        let png = with_texts(&png, &[("chara", "new")]).expect("png");
        let t = text_chunks(&png).expect("png");
        assert_eq!(
            t,
            vec![("other".into(), "x".into()), ("chara".into(), "new".into())]
        );
    }

    #[test]
    fn corrupt_pngs_are_errors_not_panics() {
        let png = with_texts(&square([9, 9, 9]), &[("chara", "abc")]).expect("png");
        for cut in [0, 7, 8, 12, 20, 33, png.len() - 1] {
            assert!(text_chunks(&png[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = png.clone();
        let n = bad.len();
        bad[n - 20] ^= 0xFF;
        assert!(text_chunks(&bad).is_err());
        let mut huge = png[..8].to_vec();
        huge.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, b't', b'E', b'X', b't']);
        assert!(text_chunks(&huge).is_err());
    }
}
