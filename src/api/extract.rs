//! Extractors whose rejections come out in the error shape of the surface that uses
//! them. Each surface names them once with its error type:
//! `type Caller = extract::Caller<VaultError>; type Json<T> = extract::Json<T, VaultError>;`
//! and its handlers then take `who: Caller` and `extract::Json(req, _): Json<Req>` (a
//! type alias cannot name a tuple struct in a pattern, so the pattern says `extract::`).

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

use super::{internal, read_json, BodyError, Ctx, SurfaceError};
use crate::auth::{self, AuthError};

/// The authenticated caller of this request, with the request's id. Dereferences to
/// [`auth::Caller`]. Rejected (403, or 503 when the store is unavailable) in `E`'s shape
/// when the request carries no valid credential.
pub struct Caller<E> {
    pub request_id: String,
    caller: Arc<auth::Caller>,
    _shape: PhantomData<fn() -> E>,
}

impl<E> Deref for Caller<E> {
    type Target = auth::Caller;
    fn deref(&self) -> &auth::Caller {
        &self.caller
    }
}

impl<S, E> FromRequestParts<S> for Caller<E>
where
    S: Send + Sync,
    E: SurfaceError + for<'a> From<&'a AuthError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, E> {
        // The middleware sets the context on every routed request.
        let ctx = parts
            .extensions
            .get::<Ctx>()
            .ok_or_else(|| internal::<E>(&"request context missing"))?;
        let caller = ctx.caller().map_err(E::from)?.clone();
        Ok(Caller {
            request_id: ctx.request_id.clone(),
            caller,
            _shape: PhantomData,
        })
    }
}

/// A JSON object body parsed into `T` (at most 64 KiB; an empty body reads as `{}`).
/// Malformed JSON or a field of the wrong type is rejected with 400 naming the field,
/// an oversized body with 413, both in `E`'s shape.
pub struct Json<T, E>(pub T, pub PhantomData<fn() -> E>);

impl<S, T, E> FromRequest<S> for Json<T, E>
where
    S: Send + Sync,
    T: DeserializeOwned,
    E: From<BodyError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request(req: Request, _: &S) -> Result<Self, E> {
        let value = read_json(req.into_body()).await?;
        Ok(Json(value, PhantomData))
    }
}
