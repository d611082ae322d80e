//! Which malformed UPDATEs a session survives (RFC 7606, "Revised Error Handling for BGP
//! UPDATE Messages").
//!
//! We originate only and ignore every route we receive, so "treat-as-withdraw" and
//! "attribute-discard" both come down to: count, log, keep the session. What still resets the
//! session is what RFC 7606 keeps as session reset: a message whose Withdrawn Routes Length or
//! Total Path Attribute Length does not fit the message, NLRI (or withdrawn routes) that do not
//! parse, and a malformed MP_REACH_NLRI / MP_UNREACH_NLRI (section 7.11: its NLRI cannot be
//! located). netgauze stays the codec: this module only walks the framing that RFC 7606 relies
//! on and asks netgauze again with the suspect attributes left out.

use super::{HEADER_LEN, parses};

const UPDATE: u8 = 2;
const MP_REACH_NLRI: u8 = 14;
const MP_UNREACH_NLRI: u8 = 15;
const EXTENDED_LENGTH: u8 = 0x10;

/// For an UPDATE netgauze rejected: why the session may survive it, or `None` when it must be
/// reset (the caller then sends netgauze's NOTIFICATION).
pub(super) fn ignorable(buf: &[u8]) -> Option<&'static str> {
    if buf.len() < HEADER_LEN + 4 || buf[18] != UPDATE {
        return None;
    }
    let body = &buf[HEADER_LEN..];
    let withdrawn_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let withdrawn_end = 2 + withdrawn_len;
    if withdrawn_end + 2 > body.len() {
        return None;
    }
    let attrs_len = usize::from(u16::from_be_bytes([
        body[withdrawn_end],
        body[withdrawn_end + 1],
    ]));
    let attrs_start = withdrawn_end + 2;
    let attrs_end = attrs_start + attrs_len;
    if attrs_end > body.len() {
        return None;
    }
    let withdrawn = &body[2..withdrawn_end];
    let nlri = &body[attrs_end..];
    if !prefixes_parse(withdrawn) || !prefixes_parse(nlri) {
        return None;
    }
    let Some(mp) = mp_attributes(&body[attrs_start..attrs_end]) else {
        // Section 4: an attribute overruns the Total Path Attribute Length, or fewer bytes than
        // an attribute header remain. The total length still locates the NLRI: treat-as-withdraw.
        return Some("path attribute lengths conflict with the total attribute length");
    };
    // Everything but the multiprotocol attributes left out: if netgauze now accepts the message,
    // the error was in an attribute RFC 7606 handles by treat-as-withdraw or attribute-discard.
    let mut rebuilt = buf[..HEADER_LEN].to_vec();
    rebuilt.extend_from_slice(&body[..withdrawn_end]);
    let mp_len = u16::try_from(mp.len()).ok()?;
    rebuilt.extend_from_slice(&mp_len.to_be_bytes());
    rebuilt.extend_from_slice(&mp);
    rebuilt.extend_from_slice(nlri);
    let total = u16::try_from(rebuilt.len()).ok()?;
    rebuilt[16..18].copy_from_slice(&total.to_be_bytes());
    parses(&rebuilt).then_some("malformed path attribute")
}

/// IPv4 prefixes as in the Withdrawn Routes and NLRI fields: a length byte (at most 32), then
/// just enough bytes.
fn prefixes_parse(mut field: &[u8]) -> bool {
    while let Some((&len, rest)) = field.split_first() {
        if len > 32 {
            return false;
        }
        let bytes = usize::from(len).div_ceil(8);
        if rest.len() < bytes {
            return false;
        }
        field = &rest[bytes..];
    }
    true
}

/// The MP_REACH_NLRI and MP_UNREACH_NLRI attributes of an attribute list, raw; `None` when the
/// attribute headers do not walk the list exactly.
fn mp_attributes(mut attrs: &[u8]) -> Option<Vec<u8>> {
    let mut mp = Vec::new();
    while !attrs.is_empty() {
        let flags = *attrs.first()?;
        let code = *attrs.get(1)?;
        let (header, len) = if flags & EXTENDED_LENGTH != 0 {
            (
                4,
                usize::from(u16::from_be_bytes([*attrs.get(2)?, *attrs.get(3)?])),
            )
        } else {
            (3, usize::from(*attrs.get(2)?))
        };
        let attr = attrs.get(..header + len)?;
        if matches!(code, MP_REACH_NLRI | MP_UNREACH_NLRI) {
            mp.extend_from_slice(attr);
        }
        attrs = &attrs[header + len..];
    }
    Some(mp)
}
