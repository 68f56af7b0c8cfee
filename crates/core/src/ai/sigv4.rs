//! AWS Signature Version 4 for Bedrock requests, by the `aws-sigv4` crate: the headers to add to a
//! request (`authorization`, `x-amz-date`, and `x-amz-security-token` for temporary credentials).
//! Pure: the time is an argument.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use std::time::SystemTime;

/// An access key pair, with the session token of temporary credentials. Debug never prints them.
#[derive(Clone, PartialEq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsCredentials(**redacted**)")
    }
}

/// A request to sign: `headers` are its own headers that the signature must cover
/// (content-type); `host` comes from the URL.
pub struct Unsigned<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The headers that sign `request` for `service` in `region` at `time`.
pub fn signed_headers(
    credentials: &AwsCredentials,
    region: &str,
    service: &str,
    request: &Unsigned,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let identity = Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "custos",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(
        request.method,
        request.url,
        request.headers.iter().copied(),
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// AWS's published SigV4 test suite, vector "get-vanilla": the same credentials, time and
    /// scope give the published signature.
    #[test]
    fn the_published_get_vanilla_vector() {
        let creds = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        // 2015-08-30T12:36:00Z
        let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let headers = signed_headers(
            &creds,
            "us-east-1",
            "service",
            &Unsigned {
                method: "GET",
                url: "https://example.amazonaws.com/",
                headers: &[],
                body: b"",
            },
            time,
        )
        .unwrap();
        let auth = &headers.iter().find(|h| h.0 == "authorization").unwrap().1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert!(!format!("{creds:?}").contains("EXAMPLEKEY"));
    }

    #[test]
    fn temporary_credentials_send_and_sign_their_token() {
        let creds = AwsCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: Some("token".into()),
        };
        let headers = signed_headers(
            &creds,
            "eu-west-1",
            "bedrock",
            &Unsigned {
                method: "POST",
                url: "http://127.0.0.1:9000/model/amazon.titan-embed-text-v2%3A0/invoke",
                headers: &[("content-type", "application/json")],
                body: b"{}",
            },
            SystemTime::now(),
        )
        .unwrap();
        let get = |n: &str| headers.iter().find(|h| h.0 == n).map(|h| h.1.clone());
        assert_eq!(get("x-amz-security-token").as_deref(), Some("token"));
        let auth = get("authorization").unwrap();
        assert!(auth.contains("/eu-west-1/bedrock/aws4_request"), "{auth}");
        assert!(auth.contains("x-amz-security-token"), "{auth}");
        assert!(auth.contains("content-type;host;x-amz-date"), "{auth}");
    }
}
