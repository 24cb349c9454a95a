//! WHIP ingest (RFC 9725): `POST /whip/{channel_id}` with an SDP offer -> `201 Created` with the
//! answer (ICE gathered, no trickle) and a `Location`; `DELETE` on that location ends it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tracing::Instrument;
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::AppState;
use crate::bandwidth;
use crate::codec::VideoCodec;
use crate::dtls_setup;
use crate::ids::new_id;
use crate::peer::{self, PeerError, PeerEvent};
use crate::record::{CloseInfo, Closer, ConnState, Connection, Transport};
use crate::signaling::MAX_ID_BYTES;

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

fn bearer_ok(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| given.trim() == token)
}

/// `POST /whip/{channel_id}`: creates a receive-only session from an SDP offer.
pub async fn post(
    State(app): State<AppState>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !bearer_ok(&headers, app.config.whip_token.as_deref()) {
        let mut response = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.trim().to_ascii_lowercase().starts_with("application/sdp") {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/sdp",
        );
    }
    if channel_id.is_empty() || channel_id.len() > MAX_ID_BYTES {
        return text(StatusCode::BAD_REQUEST, "invalid channel id");
    }
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "SDP offer is not UTF-8");
    };
    if !offer.trim_start().starts_with("v=0") || !offer.contains("\nm=") {
        return text(
            StatusCode::BAD_REQUEST,
            "body is not an SDP offer with media (expected v=0 and m= lines)",
        );
    }

    if let Err(refusal) = dtls_setup::vet_offer(&offer) {
        // Sora is always the DTLS server; an offer that insists on being it cannot be answered.
        tracing::warn!(%refusal, %channel_id, "WHIP offer refused: the endpoint is the DTLS server");
        let record = Arc::new(Connection::new(
            new_id(),
            Transport::Whip,
            channel_id.clone(),
            app.config.frame_ring,
            None,
        ));
        record.with_signaling(|s| {
            s.remote_sdp = Some(offer.clone());
            s.dtls_role_refusals += 1;
        });
        record.mark_closed(CloseInfo {
            code: None,
            reason: format!("INVALID-OFFER: {refusal}"),
            by: Closer::Server,
        });
        app.registry.add(record);
        return text(StatusCode::BAD_REQUEST, format!("cannot answer the offer: {refusal}"));
    }

    let record = Arc::new(Connection::new(
        new_id(),
        Transport::Whip,
        channel_id.clone(),
        app.config.frame_ring,
        None,
    ));
    record.with_signaling(|s| {
        s.role = Some("sendonly".into());
        s.remote_sdp = Some(offer.clone());
    });
    app.registry.add(record.clone());
    let (peer_tx, mut peer_rx) = mpsc::channel(32);
    let setup = async {
        let pc = peer::new_peer(
            app.config.ice_ip,
            app.config.ice_mode,
            &[VideoCodec::Vp8, VideoCodec::H264],
            record.clone(),
            peer_tx,
        )
        .await?;
        match peer::answer_offer(&pc, offer, &mut peer_rx).await {
            Ok(answer) => Ok((pc, answer)),
            Err(err) => {
                let _ = pc.close().await;
                Err(err)
            }
        }
    };
    let (pc, answer) = match setup.await {
        Ok((pc, answer)) => (pc, bandwidth::apply(answer, app.config.max_video_bitrate_kbps)),
        Err(err) => {
            let status = match err {
                PeerError::WebRtc {
                    what: "parse offer" | "set remote offer" | "create answer",
                    ..
                } => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(%err, %channel_id, "WHIP offer refused");
            record.mark_closed(CloseInfo {
                code: None,
                reason: format!("INVALID-OFFER: {err}"),
                by: Closer::Server,
            });
            return text(status, format!("cannot answer the offer: {err}"));
        }
    };
    record.with_signaling(|s| s.local_sdp = Some(answer.clone()));
    let location = format!("/whip/{channel_id}/{}", record.id);
    tracing::info!(connection_id = %record.id, %channel_id, "WHIP session created");

    let span = tracing::info_span!("whip", connection_id = %record.id, %channel_id);
    let shutdown = app.shutdown.clone();
    let task_record = record.clone();
    app.tasks.spawn(
        async move {
            let outcome = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break Some(CloseInfo { code: None, reason: "SERVER-SHUTDOWN".into(), by: Closer::Server }),
                    _ = task_record.cancel.cancelled() => break None,
                    event = peer_rx.recv() => match event {
                        Some(PeerEvent::State(RTCPeerConnectionState::Connected)) => task_record.mark_connected(),
                        Some(PeerEvent::State(RTCPeerConnectionState::Failed)) => {
                            break Some(CloseInfo { code: None, reason: "PEER-CONNECTION-FAILED".into(), by: Closer::Server });
                        }
                        Some(PeerEvent::State(RTCPeerConnectionState::Closed)) | None => {
                            break Some(CloseInfo { code: None, reason: "PEER-CONNECTION-CLOSED".into(), by: Closer::Client });
                        }
                        Some(_) => {}
                    },
                }
            };
            if let Some(outcome) = outcome {
                task_record.mark_closed(outcome);
            }
            if let Err(err) = pc.close().await {
                tracing::debug!(%err, "peer connection close");
            }
            tracing::info!("WHIP session ended");
        }
        .instrument(span),
    );

    let mut response = (StatusCode::CREATED, answer).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    response
}

/// `DELETE /whip/{channel_id}/{resource_id}`: ends the session.
pub async fn delete(
    State(app): State<AppState>,
    Path((channel_id, resource_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !bearer_ok(&headers, app.config.whip_token.as_deref()) {
        return text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let found = app
        .registry
        .get(&resource_id)
        .filter(|c| c.transport == Transport::Whip && c.channel_id == channel_id && c.state() != ConnState::Closed);
    let Some(record) = found else {
        return text(StatusCode::NOT_FOUND, "no such WHIP resource");
    };
    record.mark_closed(CloseInfo {
        code: None,
        reason: "WHIP-DELETE".into(),
        by: Closer::Client,
    });
    record.cancel.cancel();
    tracing::info!(connection_id = %record.id, "WHIP session deleted");
    StatusCode::OK.into_response()
}

/// `PATCH /whip/...`: trickle ICE and ICE restarts are not supported.
pub async fn patch() -> Response {
    text(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle ICE is not supported; send a complete offer",
    )
}
