//! Ed25519 agent keys in the two formats the `apes` client reads: OpenSSH
//! (`-----BEGIN OPENSSH PRIVATE KEY-----`, unencrypted, one key) and
//! PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, what `escapes enroll` and
//! `apes enroll` write), plus the `ssh-ed25519 … COMMENT` public line.
//!
//! Every parser here reads bounded input, checks every length against what
//! is left before using it, and compares the public half stored in the file
//! with the one derived from the seed: a file that disagrees with itself is
//! refused, not half-used.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;

/// Largest key file accepted (an Ed25519 key file is well under 1 KiB).
pub const MAX_KEY_FILE: usize = 16 * 1024;

const OPENSSH_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const OPENSSH_END: &str = "-----END OPENSSH PRIVATE KEY-----";
const PKCS8_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PKCS8_END: &str = "-----END PRIVATE KEY-----";
const SSH_ED25519: &str = "ssh-ed25519";

/// PKCS#8 v1 (RFC 8410) prefix of an Ed25519 private key: 16 bytes, then
/// the 32-byte seed.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// PKCS#8 v2 (OneAsymmetricKey with the public key) prefix; the seed, then
/// `81 21 00` and the 32-byte public key follow.
const PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PKCS8_V2_PUB_TAG: [u8; 3] = [0x81, 0x21, 0x00];

/// The base64 body between `begin` and `end` lines, decoded.
fn pem_body(text: &str, begin: &str, end: &str) -> Result<Vec<u8>, String> {
    let start = text
        .find(begin)
        .ok_or_else(|| "no PEM header".to_string())?;
    let after = text.get(start + begin.len()..).unwrap_or_default();
    let stop = after
        .find(end)
        .ok_or_else(|| "the PEM block has no end line".to_string())?;
    let body: String = after
        .get(..stop)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if body.len() > MAX_KEY_FILE
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return Err("the PEM body is not base64".into());
    }
    STANDARD
        .decode(body.as_bytes())
        .map_err(|_| "the PEM body is not base64".to_string())
}

/// Parse a private key file: OpenSSH or PKCS#8 PEM, Ed25519 only.
pub fn parse_private_key(data: &[u8]) -> Result<SigningKey, String> {
    if data.len() > MAX_KEY_FILE {
        return Err("the key file is too large to be an Ed25519 key".into());
    }
    let text = std::str::from_utf8(data).map_err(|_| "the key file is not text".to_string())?;
    if text.contains(OPENSSH_BEGIN) {
        return parse_openssh(&pem_body(text, OPENSSH_BEGIN, OPENSSH_END)?);
    }
    if text.contains(PKCS8_BEGIN) {
        return parse_pkcs8(&pem_body(text, PKCS8_BEGIN, PKCS8_END)?);
    }
    if text.contains("ENCRYPTED PRIVATE KEY") {
        return Err("encrypted keys are not supported (use an unencrypted Ed25519 key)".into());
    }
    Err("not an OpenSSH or PKCS#8 PEM Ed25519 private key".into())
}

fn seed_of(bytes: &[u8]) -> Result<[u8; 32], String> {
    <[u8; 32]>::try_from(bytes).map_err(|_| "the key is not 32 bytes".to_string())
}

/// PKCS#8 DER of an Ed25519 key (v1, or v2 carrying the public key).
pub fn parse_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
    if der.len() == 48 && der.get(..16) == Some(&PKCS8_V1_PREFIX[..]) {
        return Ok(SigningKey::from_bytes(&seed_of(
            der.get(16..48).unwrap_or_default(),
        )?));
    }
    if der.len() == 83
        && der.get(..16) == Some(&PKCS8_V2_PREFIX[..])
        && der.get(48..51) == Some(&PKCS8_V2_PUB_TAG[..])
    {
        let key = SigningKey::from_bytes(&seed_of(der.get(16..48).unwrap_or_default())?);
        if der.get(51..83) != Some(&key.verifying_key().to_bytes()[..]) {
            return Err("the key's public half does not match its private half".into());
        }
        return Ok(key);
    }
    Err("not an Ed25519 PKCS#8 key (only Ed25519 keys are supported)".into())
}

/// A bounded reader of the SSH wire format (RFC 4251 `uint32`/`string`).
struct Wire<'a> {
    rest: &'a [u8],
}

impl<'a> Wire<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err("the OpenSSH key is truncated".into());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        let arr = <[u8; 4]>::try_from(b).map_err(|_| "the OpenSSH key is truncated".to_string())?;
        Ok(u32::from_be_bytes(arr))
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let n = usize::try_from(self.u32()?).map_err(|_| "length overflow".to_string())?;
        self.take(n)
    }
}

/// The decoded body of an `OPENSSH PRIVATE KEY` block.
pub fn parse_openssh(blob: &[u8]) -> Result<SigningKey, String> {
    const MAGIC: &[u8] = b"openssh-key-v1\0";
    let mut w = Wire {
        rest: blob
            .strip_prefix(MAGIC)
            .ok_or_else(|| "not an OpenSSH private key".to_string())?,
    };
    let cipher = w.string()?;
    let kdf = w.string()?;
    let _kdf_options = w.string()?;
    if cipher != b"none" || kdf != b"none" {
        return Err(
            "the OpenSSH key is encrypted (passphrase keys are not supported; use an unencrypted key)"
                .into(),
        );
    }
    if w.u32()? != 1 {
        return Err("the OpenSSH key file must hold exactly one key".into());
    }
    let public_blob = w.string()?;
    let private = w.string()?;
    if !w.rest.is_empty() {
        return Err("the OpenSSH key has trailing data".into());
    }
    let public = ssh_public_from_blob(public_blob)?;

    let mut p = Wire { rest: private };
    if p.u32()? != p.u32()? {
        return Err("the OpenSSH key's check numbers differ (encrypted or damaged)".into());
    }
    if p.string()? != SSH_ED25519.as_bytes() {
        return Err("only Ed25519 keys are supported".into());
    }
    let inner_public = p.string()?;
    let secret = p.string()?;
    let _comment = p.string()?;
    // Padding: 1, 2, 3, ... up to the cipher block size (8 for "none").
    if p.rest.len() >= 8
        || p.rest
            .iter()
            .enumerate()
            .any(|(i, b)| usize::from(*b) != i + 1)
    {
        return Err("the OpenSSH key's padding is wrong".into());
    }
    if secret.len() != 64 {
        return Err("the OpenSSH Ed25519 secret is not 64 bytes".into());
    }
    let key = SigningKey::from_bytes(&seed_of(secret.get(..32).unwrap_or_default())?);
    let derived = key.verifying_key().to_bytes();
    if inner_public != derived || secret.get(32..) != Some(&derived[..]) || public != derived {
        return Err("the key's public half does not match its private half".into());
    }
    Ok(key)
}

/// The 32-byte key of an `ssh-ed25519` public key blob.
fn ssh_public_from_blob(blob: &[u8]) -> Result<[u8; 32], String> {
    let mut w = Wire { rest: blob };
    if w.string()? != SSH_ED25519.as_bytes() {
        return Err("only Ed25519 keys are supported".into());
    }
    let key = seed_of(w.string()?)?;
    if !w.rest.is_empty() {
        return Err("the public key has trailing data".into());
    }
    Ok(key)
}

fn ssh_blob(public: &[u8; 32]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(51);
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(SSH_ED25519.as_bytes());
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(public);
    blob
}

/// `ssh-ed25519 <base64 blob>` plus ` COMMENT` when given.
pub fn ssh_public_line(key: &SigningKey, comment: Option<&str>) -> String {
    let line = format!(
        "{SSH_ED25519} {}",
        STANDARD.encode(ssh_blob(&key.verifying_key().to_bytes()))
    );
    match comment {
        Some(c) if !c.is_empty() => format!("{line} {c}"),
        _ => line,
    }
}

/// A `.pub` line: its 32-byte key and its comment (the rest of the line).
pub fn parse_public_line(text: &str) -> Result<([u8; 32], Option<String>), String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| "the public key file is empty".to_string())?;
    let mut parts = line.splitn(3, char::is_whitespace);
    if parts.next() != Some(SSH_ED25519) {
        return Err("the public key is not ssh-ed25519".into());
    }
    let blob = STANDARD
        .decode(parts.next().unwrap_or_default().as_bytes())
        .map_err(|_| "the public key is not base64".to_string())?;
    let key = ssh_public_from_blob(&blob)?;
    let comment = parts
        .next()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    Ok((key, comment))
}

/// PKCS#8 v1 PEM of `key` (what `escapes enroll` writes, 0600).
pub fn pkcs8_pem(key: &SigningKey) -> String {
    let mut der = PKCS8_V1_PREFIX.to_vec();
    der.extend_from_slice(&key.to_bytes());
    format!("{PKCS8_BEGIN}\n{}\n{PKCS8_END}\n", STANDARD.encode(&der))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use ed25519_dalek::Signer as _;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn openssh_file(key: &SigningKey, tweak: impl Fn(&mut Vec<u8>)) -> String {
        let public = key.verifying_key().to_bytes();
        let s = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        let mut private = Vec::new();
        private.extend_from_slice(&[1, 2, 3, 4, 1, 2, 3, 4]);
        s(&mut private, b"ssh-ed25519");
        s(&mut private, &public);
        let mut secret = key.to_bytes().to_vec();
        secret.extend_from_slice(&public);
        s(&mut private, &secret);
        s(&mut private, b"agent@example.com");
        let mut pad = 1u8;
        while private.len() % 8 != 0 {
            private.push(pad);
            pad += 1;
        }
        let mut blob = b"openssh-key-v1\0".to_vec();
        s(&mut blob, b"none");
        s(&mut blob, b"none");
        s(&mut blob, b"");
        blob.extend_from_slice(&1u32.to_be_bytes());
        s(&mut blob, &ssh_blob(&public));
        s(&mut blob, &private);
        tweak(&mut blob);
        let b64 = STANDARD.encode(&blob);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(70)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!("{OPENSSH_BEGIN}\n{}\n{OPENSSH_END}\n", lines.join("\n"))
    }

    #[test]
    fn pkcs8_round_trip_and_signatures_verify() {
        let k = key();
        let pem = pkcs8_pem(&k);
        let back = parse_private_key(pem.as_bytes()).unwrap();
        assert_eq!(back.to_bytes(), k.to_bytes());
        let sig = back.sign(b"challenge");
        assert!(k.verifying_key().verify_strict(b"challenge", &sig).is_ok());
    }

    #[test]
    fn pkcs8_v2_with_matching_public_key() {
        let k = key();
        let mut der = PKCS8_V2_PREFIX.to_vec();
        der.extend_from_slice(&k.to_bytes());
        der.extend_from_slice(&PKCS8_V2_PUB_TAG);
        der.extend_from_slice(&k.verifying_key().to_bytes());
        assert_eq!(parse_pkcs8(&der).unwrap().to_bytes(), k.to_bytes());
        let last = der.len() - 1;
        der[last] ^= 1;
        assert!(parse_pkcs8(&der).is_err());
    }

    #[test]
    fn openssh_key_is_read_and_checked() {
        let k = key();
        let good = openssh_file(&k, |_| {});
        assert_eq!(
            parse_private_key(good.as_bytes()).unwrap().to_bytes(),
            k.to_bytes()
        );
        // Encrypted: cipher name changed.
        let enc = openssh_file(&k, |b| {
            let at = 15 + 4;
            b[at..at + 4].copy_from_slice(b"aesX");
        });
        assert!(parse_private_key(enc.as_bytes()).is_err());
        // Truncated anywhere: refused, never a panic.
        let blob = pem_body(&good, OPENSSH_BEGIN, OPENSSH_END).unwrap();
        for n in 0..blob.len() {
            assert!(parse_openssh(&blob[..n]).is_err(), "prefix {n}");
        }
        // A huge length field: refused.
        let mut big = blob.clone();
        big[15..19].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_openssh(&big).is_err());
        // Every single-byte change: refused or the very same key.
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0x40;
            if let Ok(other) = parse_openssh(&b) {
                assert_eq!(other.to_bytes(), k.to_bytes(), "byte {i}");
            }
        }
    }

    #[test]
    fn other_files_are_refused() {
        for text in [
            "",
            "hello",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n",
        ] {
            assert!(parse_private_key(text.as_bytes()).is_err(), "{text:?}");
        }
        assert!(parse_private_key(&vec![b'a'; MAX_KEY_FILE + 1]).is_err());
    }

    #[test]
    fn public_line_round_trip() {
        let k = key();
        let line = ssh_public_line(&k, Some("agent@example.com"));
        let (pk, comment) = parse_public_line(&format!("{line}\n")).unwrap();
        assert_eq!(pk, k.verifying_key().to_bytes());
        assert_eq!(comment.as_deref(), Some("agent@example.com"));
        let (_, none) = parse_public_line(&ssh_public_line(&k, None)).unwrap();
        assert_eq!(none, None);
        assert!(parse_public_line("ssh-rsa AAAA x").is_err());
        assert!(parse_public_line("ssh-ed25519 !!!").is_err());
    }
}
