//! Strict unpadded base64url (RFC 4648 §5) for the address's text form.

pub(super) const B64: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_char(v: u32) -> char {
    B64.get((v & 63) as usize).map_or('A', |&c| char::from(c))
}

pub(super) fn base64url_encode(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let mut buf = [0u8; 3];
        for (d, s) in buf.iter_mut().zip(chunk) {
            *d = *s;
        }
        let [a, b, c] = buf;
        let v = (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c);
        // 2, 3 or 4 characters for 1, 2 or 3 bytes.
        let chars = chunk.len().saturating_add(1);
        for i in 0..chars {
            let shift = 18u32.saturating_sub(6u32.saturating_mul(i as u32));
            out.push(b64_char(v >> shift));
        }
    }
}

pub(super) fn b64_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c.wrapping_sub(b'A'),
        b'a'..=b'z' => c.wrapping_sub(b'a').wrapping_add(26),
        b'0'..=b'9' => c.wrapping_sub(b'0').wrapping_add(52),
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Strict unpadded base64url: `None` on any other character, a dangling single character, or
/// non-zero unused bits (so every byte string has exactly one accepted text).
pub(super) fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len().saturating_mul(3) / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut v = 0u32;
        for &c in chunk {
            v = (v << 6) | b64_value(c)?;
        }
        let [_, b0, b1, b2] = match chunk.len() {
            4 => v.to_be_bytes(),
            3 => {
                if v & 0b11 != 0 {
                    return None;
                }
                (v << 6).to_be_bytes()
            }
            2 => {
                if v & 0b1111 != 0 {
                    return None;
                }
                (v << 12).to_be_bytes()
            }
            _ => return None,
        };
        let n = chunk.len().saturating_sub(1);
        out.extend([b0, b1, b2].iter().take(n));
    }
    Some(out)
}
