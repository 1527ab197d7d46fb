//! Just enough DER to read the few certificate fields webpki does not expose: the URI subject
//! alternative names (the SPIFFE identity: Certificate → tbsCertificate → extensions `[3]` →
//! subjectAltName (2.5.29.17) → GeneralName `[6]`), and, to check a CA file before it is used,
//! the basic constraints, the subject's common name and the subject public key.
//! Chain validation is webpki's job.

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
const BASIC_CONSTRAINTS_OID: [u8; 3] = [0x55, 0x1d, 0x13];
const COMMON_NAME_OID: [u8; 3] = [0x55, 0x04, 0x03];
const BOOLEAN: u8 = 0x01;
const BIT_STRING: u8 = 0x03;
const SET: u8 = 0x31;
const VERSION: u8 = 0xa0;

/// The fields of tbsCertificate, the optional version skipped: serial, signature, issuer,
/// validity, subject, subjectPublicKeyInfo, then the optional ones.
fn tbs_fields(cert_der: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let (SEQUENCE, cert, _) = element(cert_der)? else { return None };
    let (SEQUENCE, tbs, _) = element(cert)? else { return None };
    let mut fields = children(tbs)?;
    if fields.first().is_some_and(|(t, _)| *t == VERSION) {
        fields.remove(0);
    }
    (fields.len() >= 6).then_some(fields)
}

/// The (OID, value) of each extension; empty when there are none.
fn extensions(cert_der: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let fields = tbs_fields(cert_der)?;
    let Some((_, exts)) = fields.into_iter().find(|(t, _)| *t == EXTENSIONS) else {
        return Some(Vec::new());
    };
    let (SEQUENCE, exts, _) = element(exts)? else { return None };
    let mut out = Vec::new();
    for (tag, ext) in children(exts)? {
        if tag != SEQUENCE {
            return None;
        }
        let parts = children(ext)?;
        let (&(OID, oid), &(OCTET_STRING, value)) = (parts.first()?, parts.last()?) else {
            return None;
        };
        out.push((oid, value));
    }
    Some(out)
}

/// Whether the certificate may sign others (basicConstraints cA); `None` if unparsable.
pub fn is_ca(cert_der: &[u8]) -> Option<bool> {
    let exts = extensions(cert_der)?;
    let Some((_, value)) = exts.into_iter().find(|(oid, _)| *oid == BASIC_CONSTRAINTS_OID) else {
        return Some(false);
    };
    let (SEQUENCE, bc, _) = element(value)? else { return None };
    Some(matches!(children(bc)?.first(), Some((BOOLEAN, [b])) if *b != 0))
}

/// The subject's common name, if it has one.
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    let subject = tbs_fields(cert_der)?[4].1;
    for (tag, rdn) in children(subject)? {
        if tag != SET {
            continue;
        }
        for (_, atv) in children(rdn)? {
            let parts = children(atv)?;
            if let [(OID, oid), (_, value)] = parts.as_slice()
                && *oid == COMMON_NAME_OID
            {
                return String::from_utf8(value.to_vec()).ok();
            }
        }
    }
    None
}

/// The subject public key (the BIT STRING's bits, as keys compare).
pub fn public_key(cert_der: &[u8]) -> Option<Vec<u8>> {
    let spki = tbs_fields(cert_der)?[5].1;
    let parts = children(spki)?;
    let &(BIT_STRING, bits) = parts.get(1)? else { return None };
    let (&unused, key) = bits.split_first()?;
    (unused == 0).then(|| key.to_vec())
}

/// The URI SANs of a DER certificate; `None` if it cannot be parsed.
pub fn uri_sans(cert_der: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for (oid, value) in extensions(cert_der)? {
        if oid != SAN_OID {
            continue;
        }
        let (SEQUENCE, names, _) = element(value)? else { return None };
        for (tag, name) in children(names)? {
            if tag == URI_NAME {
                out.push(String::from_utf8(name.to_vec()).ok()?);
            }
        }
    }
    Some(out)
}

/// An OID's arcs from its DER contents; `None` if malformed.
fn oid_arcs(bytes: &[u8]) -> Option<Vec<u64>> {
    let (&first, rest) = bytes.split_first()?;
    let mut arcs = vec![u64::from(first / 40).min(2), 0];
    arcs[1] = u64::from(first) - arcs[0] * 40;
    let mut acc: u64 = 0;
    for &b in rest {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(acc);
            acc = 0;
        }
    }
    (acc == 0).then_some(arcs)
}

/// One attribute of a distinguished name: type OID arcs, ASN.1 string tag, value bytes.
pub type NameAttribute = (Vec<u64>, u8, Vec<u8>);

/// The subject of a DER certificate as `(attribute type OID arcs, string tag, value bytes)`, in
/// order (each relative name of one attribute, as CAs write them); `None` if it cannot be parsed.
/// A certificate signed by that CA must name exactly this as its issuer, string types included.
pub fn subject_attributes(cert_der: &[u8]) -> Option<Vec<NameAttribute>> {
    const SET: u8 = 0x31;
    const VERSION: u8 = 0xa0;
    let (SEQUENCE, cert, _) = element(cert_der)? else { return None };
    let (SEQUENCE, tbs, _) = element(cert)? else { return None };
    let fields = children(tbs)?;
    // version?, serialNumber, signature, issuer, validity, subject
    let at = if fields.first()?.0 == VERSION { 5 } else { 4 };
    let &(SEQUENCE, subject) = fields.get(at)? else { return None };
    let mut out = Vec::new();
    for (tag, rdn) in children(subject)? {
        if tag != SET {
            return None;
        }
        for (tag, atv) in children(rdn)? {
            if tag != SEQUENCE {
                return None;
            }
            let parts = children(atv)?;
            let (&(OID, oid), &(value_tag, value)) = (parts.first()?, parts.get(1)?) else {
                return None;
            };
            out.push((oid_arcs(oid)?, value_tag, value.to_vec()));
        }
    }
    Some(out)
}
