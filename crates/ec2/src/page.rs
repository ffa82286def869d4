//! NextToken: an opaque position in a listing.

use base64::Engine;

use crate::error::Ec2Error;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The token of a position.
pub fn offset_token(offset: usize) -> String {
    B64.encode(format!("vws-page:{offset}"))
}

/// The position a token stands for.
pub fn token_offset(token: &str) -> Result<usize, Ec2Error> {
    B64.decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("vws-page:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            Ec2Error::client(
                "InvalidNextToken",
                format!("The token '{token}' is invalid"),
            )
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_round_trip() {
        assert_eq!(super::token_offset(&super::offset_token(42)).unwrap(), 42);
        assert_eq!(
            super::token_offset("junk").unwrap_err().code,
            "InvalidNextToken"
        );
    }
}
