//! Admin authentication: HMAC-SHA256 challenge-response over both sides' nonces, in both
//! directions.
//!
//! Each side sends a fresh random nonce (the server in its hello, the client with its proof).
//! The client proves it knows the cookie with `HMAC(cookie, CLIENT_LABEL ‖ 0 ‖ Ns ‖ Nc)`; the
//! server answers with `HMAC(cookie, SERVER_LABEL ‖ 0 ‖ Ns ‖ Nc)`.
//!
//! - The cookie never crosses the wire, only MACs of fresh nonces.
//! - A proof is bound to its connection by the server's nonce, fresh for every connection, so
//!   a proof captured on one connection is worthless on another.
//! - The labels make the two directions different messages, so the server's proof can never be
//!   reflected back as a client's.
//! - The client speaks first, so a stranger who connects learns nothing: only a server the
//!   client chose to talk to sees a client proof (and it sees no more than a MAC).
//! - Proofs are compared in constant time (`hmac`'s `verify_slice`).
//!
//! Everything here is pure: nonces come in as arguments, so tests can fix them.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) use crate::wire::Role;
use crate::{AdminCookie, wire::NONCE_LEN};

/// The labels of the client's proof and of the server's, for a role: the domain separation of
/// the two directions and of the two cookies; the protocol version is part of them.
fn labels(role: Role) -> (&'static [u8], &'static [u8]) {
    match role {
        Role::Admin => (
            b"exsyst-worker admin v1 client",
            b"exsyst-worker admin v1 server",
        ),
        Role::Client => (
            b"exsyst-worker client v1 client",
            b"exsyst-worker client v1 server",
        ),
    }
}

/// A nonce: 32 random bytes, fresh for each connection and each authentication.
pub(crate) type Nonce = [u8; NONCE_LEN];

/// Draws a nonce from the operating system's random number generator.
pub(crate) fn fresh_nonce() -> Result<Nonce, getrandom::Error> {
    let mut nonce = [0; NONCE_LEN];
    getrandom::fill(&mut nonce)?;
    Ok(nonce)
}

/// Why an authentication failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// This side has no cookie, so it cannot take part at all.
    NoCookie,
    /// The client's proof is wrong: it does not know the server's cookie.
    Unauthorized,
    /// The server's proof is wrong: it does not know the client's cookie.
    ServerNotAuthenticated,
    /// A nonce is not [`NONCE_LEN`] bytes long.
    BadNonce,
}

fn mac(
    cookie: &AdminCookie,
    label: &[u8],
    server_nonce: &Nonce,
    client_nonce: &Nonce,
) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cookie.expose())
        .expect("HMAC takes keys of any length");
    mac.update(label);
    // The labels are of different lengths; the zero keeps a label from running into the nonces.
    mac.update(&[0]);
    mac.update(server_nonce);
    mac.update(client_nonce);
    mac
}

fn nonce(bytes: &[u8]) -> Result<Nonce, AuthError> {
    bytes.try_into().map_err(|_| AuthError::BadNonce)
}

/// The client's side of one authentication.
#[derive(Debug)]
pub(crate) struct ClientAuth<'c> {
    cookie: &'c AdminCookie,
    role: Role,
    server_nonce: Nonce,
    client_nonce: Nonce,
}

impl<'c> ClientAuth<'c> {
    /// Starts an authentication on a connection whose hello carried `server_nonce`.
    ///
    /// Without a cookie this fails with [`AuthError::NoCookie`] before anything is produced to
    /// send.
    pub(crate) fn start(
        role: Role,
        cookie: Option<&'c AdminCookie>,
        server_nonce: &[u8],
        client_nonce: Nonce,
    ) -> Result<Self, AuthError> {
        let cookie = cookie.ok_or(AuthError::NoCookie)?;
        Ok(ClientAuth {
            cookie,
            role,
            server_nonce: nonce(server_nonce)?,
            client_nonce,
        })
    }

    /// The role this authentication is for.
    pub(crate) fn role(&self) -> Role {
        self.role
    }

    /// The client's nonce, to send.
    pub(crate) fn client_nonce(&self) -> &Nonce {
        &self.client_nonce
    }

    /// The client's proof, to send.
    pub(crate) fn proof(&self) -> Vec<u8> {
        mac(
            self.cookie,
            labels(self.role).0,
            &self.server_nonce,
            &self.client_nonce,
        )
        .finalize()
        .into_bytes()
        .to_vec()
    }

    /// Checks the server's proof, in constant time.
    pub(crate) fn verify_server(&self, proof: &[u8]) -> Result<(), AuthError> {
        mac(
            self.cookie,
            labels(self.role).1,
            &self.server_nonce,
            &self.client_nonce,
        )
        .verify_slice(proof)
        .map_err(|_| AuthError::ServerNotAuthenticated)
    }
}

/// The server's side: checks a client's proof for `role` (in constant time) against each
/// cookie that may authenticate it, and, when one is right, gives the server's proof (made
/// with that cookie) to send back.
///
/// The admin role takes the admin cookie; the client role the client cookie or the admin
/// cookie (its holder may do more than send data). Without a cookie for the role this fails
/// with [`AuthError::NoCookie`].
pub(crate) fn verify_client(
    role: Role,
    cookies: &[Option<&AdminCookie>],
    server_nonce: &Nonce,
    client_nonce: &[u8],
    proof: &[u8],
) -> Result<Vec<u8>, AuthError> {
    let client_nonce = nonce(client_nonce)?;
    let (client_label, server_label) = labels(role);
    let mut any = false;
    for cookie in cookies.iter().flatten() {
        any = true;
        if mac(cookie, client_label, server_nonce, &client_nonce)
            .verify_slice(proof)
            .is_ok()
        {
            return Ok(mac(cookie, server_label, server_nonce, &client_nonce)
                .finalize()
                .into_bytes()
                .to_vec());
        }
    }
    Err(if any {
        AuthError::Unauthorized
    } else {
        AuthError::NoCookie
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie(text: &str) -> AdminCookie {
        AdminCookie::new(text).unwrap()
    }

    const NS: Nonce = [0x11; NONCE_LEN];
    const NC: Nonce = [0x22; NONCE_LEN];

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_right_cookie_authenticates_both_sides() {
        let c = cookie("s3cret");
        let client = ClientAuth::start(Role::Admin, Some(&c), &NS, NC).unwrap();
        let server_proof = verify_client(
            Role::Admin,
            &[Some(&c)],
            &NS,
            client.client_nonce(),
            &client.proof(),
        )
        .expect("the server accepts");
        assert_eq!(client.verify_server(&server_proof), Ok(()));
    }

    #[test]
    fn a_wrong_cookie_is_unauthorized() {
        let client_cookie = cookie("guess");
        let client = ClientAuth::start(Role::Admin, Some(&client_cookie), &NS, NC).unwrap();
        assert_eq!(
            verify_client(
                Role::Admin,
                &[Some(&cookie("s3cret"))],
                &NS,
                &NC,
                &client.proof()
            ),
            Err(AuthError::Unauthorized)
        );
    }

    #[test]
    fn a_proof_is_bound_to_its_connection() {
        let c = cookie("s3cret");
        let captured = ClientAuth::start(Role::Admin, Some(&c), &NS, NC)
            .unwrap()
            .proof();
        // A new connection has a new server nonce: the captured proof is refused there.
        let other_connection: Nonce = [0x33; NONCE_LEN];
        assert_eq!(
            verify_client(Role::Admin, &[Some(&c)], &other_connection, &NC, &captured),
            Err(AuthError::Unauthorized)
        );
        // And it is bound to the client's nonce too.
        assert_eq!(
            verify_client(Role::Admin, &[Some(&c)], &NS, &[0x44; NONCE_LEN], &captured),
            Err(AuthError::Unauthorized)
        );
    }

    #[test]
    fn a_server_that_does_not_know_the_cookie_is_detected() {
        let c = cookie("s3cret");
        let client = ClientAuth::start(Role::Admin, Some(&c), &NS, NC).unwrap();
        // An impostor can only guess, or reflect the client's own proof.
        for forged in [vec![0; 32], client.proof(), vec![], vec![1; 31]] {
            assert_eq!(
                client.verify_server(&forged),
                Err(AuthError::ServerNotAuthenticated)
            );
        }
        // A server with another cookie produces a proof that does not verify either.
        let other = verify_client(
            Role::Admin,
            &[Some(&cookie("other"))],
            &NS,
            &NC,
            &ClientAuth::start(Role::Admin, Some(&cookie("other")), &NS, NC)
                .unwrap()
                .proof(),
        )
        .unwrap();
        assert_eq!(
            client.verify_server(&other),
            Err(AuthError::ServerNotAuthenticated)
        );
    }

    #[test]
    fn without_a_cookie_nothing_starts() {
        assert_eq!(
            ClientAuth::start(Role::Admin, None, &NS, NC).map(|_| ()),
            Err(AuthError::NoCookie)
        );
        assert_eq!(
            verify_client(Role::Admin, &[None], &NS, &NC, &[0; 32]),
            Err(AuthError::NoCookie)
        );
    }

    #[test]
    fn nonces_of_the_wrong_length_are_refused() {
        let c = cookie("s3cret");
        assert_eq!(
            ClientAuth::start(Role::Admin, Some(&c), &NS[..31], NC).map(|_| ()),
            Err(AuthError::BadNonce)
        );
        assert_eq!(
            verify_client(Role::Admin, &[Some(&c)], &NS, &NC[..16], &[0; 32]),
            Err(AuthError::BadNonce)
        );
    }

    #[test]
    fn fresh_nonces_differ() {
        assert_ne!(fresh_nonce().unwrap(), fresh_nonce().unwrap());
    }

    /// The test vectors of the protocol guide, one per role, for implementations in other
    /// languages (Python's `hmac` module gives the same values from the formula in the guide).
    #[test]
    fn the_documented_test_vectors_hold() {
        let c = cookie("correct horse battery staple");
        let ns: Nonce = std::array::from_fn(|i| i as u8);
        let nc: Nonce = std::array::from_fn(|i| 0x20 + i as u8);
        let guide = include_str!("protocol.rs");
        for (role, client_proof, server_proof) in DOC_VECTORS {
            let client = ClientAuth::start(role, Some(&c), &ns, nc).unwrap();
            let server = verify_client(role, &[Some(&c)], &ns, &nc, &client.proof()).unwrap();
            assert_eq!(hex(&client.proof()), client_proof, "{role:?}");
            assert_eq!(hex(&server), server_proof, "{role:?}");
            assert!(guide.contains(client_proof) && guide.contains(server_proof));
        }
    }

    /// A proof for one role is worth nothing for the other, even with the same cookie.
    #[test]
    fn the_roles_proofs_differ() {
        let c = cookie("one cookie for both");
        let client = ClientAuth::start(Role::Client, Some(&c), &NS, NC).unwrap();
        assert_eq!(
            verify_client(Role::Admin, &[Some(&c)], &NS, &NC, &client.proof()),
            Err(AuthError::Unauthorized)
        );
        // The client role takes the client cookie, then the admin cookie.
        let (admin, other) = (cookie("admin"), cookie("client"));
        let with_admin = ClientAuth::start(Role::Client, Some(&admin), &NS, NC).unwrap();
        let proof = verify_client(
            Role::Client,
            &[Some(&other), Some(&admin)],
            &NS,
            &NC,
            &with_admin.proof(),
        )
        .unwrap();
        assert_eq!(with_admin.verify_server(&proof), Ok(()));
        assert_eq!(
            verify_client(Role::Client, &[None, None], &NS, &NC, &with_admin.proof()),
            Err(AuthError::NoCookie)
        );
    }

    /// (role, client proof, server proof) of the guide's test vectors.
    const DOC_VECTORS: [(Role, &str, &str); 2] = [
        (
            Role::Admin,
            "5b6e35b4b639d9f6791e3bb104a7cf35fbd99e882d76e7d9209e658d296785d3",
            "09ef7281443d464b6973f87b60bb01acf8c2992cb33dff4b2046ce6d6faf33d3",
        ),
        (
            Role::Client,
            "38b8cae4922a023a0e110eb00a0256616b953e2e3cb2e87a4619664e3dbebb65",
            "22369b3a7deec74ecb67c66c80244a964c17ef227546dd5924d3a49758953f86",
        ),
    ];
}
