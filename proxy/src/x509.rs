//! Just enough DER to read a certificate's URI subject alternative names (the SPIFFE identity):
//! Certificate → tbsCertificate → extensions `[3]` → subjectAltName (2.5.29.17) → GeneralName `[6]`.
//! Chain validation is webpki's job; this only reads a field webpki does not expose.

/// One DER element: (tag, contents, rest of the input).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed value's contents.
fn children(mut contents: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !contents.is_empty() {
        let (tag, value, rest) = element(contents)?;
        out.push((tag, value));
        contents = rest;
    }
    Some(out)
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const EXTENSIONS: u8 = 0xa3;
const URI_NAME: u8 = 0x86;
const SAN_OID: [u8; 3] = [0x55, 0x1d, 0x11];

/// The URI SANs of a DER certificate; `None` if it cannot be parsed.
pub fn uri_sans(cert_der: &[u8]) -> Option<Vec<String>> {
    let (SEQUENCE, cert, _) = element(cert_der)? else { return None };
    let (SEQUENCE, tbs, _) = element(cert)? else { return None };
    let Some((_, exts)) = children(tbs)?.into_iter().find(|(t, _)| *t == EXTENSIONS) else {
        return Some(Vec::new());
    };
    let (SEQUENCE, exts, _) = element(exts)? else { return None };
    let mut out = Vec::new();
    for (tag, ext) in children(exts)? {
        if tag != SEQUENCE {
            return None;
        }
        let parts = children(ext)?;
        let Some(&(OID, oid)) = parts.first() else { return None };
        if oid != SAN_OID {
            continue;
        }
        let &(OCTET_STRING, value) = parts.last()? else { return None };
        let (SEQUENCE, names, _) = element(value)? else { return None };
        for (tag, name) in children(names)? {
            if tag == URI_NAME {
                out.push(String::from_utf8(name.to_vec()).ok()?);
            }
        }
    }
    Some(out)
}
