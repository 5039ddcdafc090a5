//! `/public/sessions/{id}/files…` and `/recording`: a session's downloads and uploads, one
//! by one or as a zip, and its recording; served with ranges, so that a `<video>` element
//! can seek and a large download can resume. `/screenshot` is a live session's screen now
//! (the dashboard's thumbnails).

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use super::error::{ApiError, Attempt, empty_response, json_response, session_refusal};
use super::request::query_pairs;
use super::{Body, full, timestamp};
use crate::artifacts::{FileEntry, FileError, FileState, SessionFiles, zip};
use crate::auth::Tenant;
use crate::broker::Broker;

/// The file as the API lists it.
pub(crate) fn render_file(entry: &FileEntry) -> Value {
    json!({
        "name": entry.name,
        "size": entry.size,
        "created_at": timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(entry.created_at)),
        "kind": entry.kind,
        "complete": entry.state == FileState::Complete,
        "state": entry.state,
    })
}

/// The session's files, if it is the tenant's (an unknown session is a 404; a session
/// without files has none).
async fn files_of(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
) -> Result<Option<std::sync::Arc<SessionFiles>>, ApiError> {
    broker
        .record(tenant, id)
        .await
        .map_err(|e| session_refusal(e, Attempt::Change))?;
    Ok(broker.artifacts().existing(id))
}

/// `/public/sessions/{id}/files`: list (GET) or upload (POST).
pub(crate) async fn collection(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match *request.method() {
        Method::GET => {
            let files = files_of(broker, tenant, id).await?;
            let list: Vec<Value> = files
                .map(|f| f.list())
                .unwrap_or_default()
                .iter()
                .map(render_file)
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "files": list })))
        }
        Method::POST => upload(broker, tenant, id, request).await,
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `/public/sessions/{id}/files/{name}`: read (GET, ranges) or remove (DELETE).
pub(crate) async fn one(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    raw_name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let name = percent_encoding::percent_decode_str(raw_name)
        .decode_utf8()
        .map_err(|_| ApiError::not_found("no such file"))?;
    let files = files_of(broker, tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no file named {name:?}")))?;
    match *request.method() {
        Method::GET | Method::HEAD => {
            let (path, entry) = files.get(&name)?;
            serve(
                &path,
                &entry.name,
                request.headers(),
                *request.method() == Method::HEAD,
                true,
            )
            .await
        }
        Method::DELETE => {
            files.remove(&name)?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// `/public/sessions/{id}/files.zip`: every complete file in one archive.
pub(crate) async fn archive(broker: &Broker, tenant: &Tenant, id: &str) -> Result<Response<Body>, ApiError> {
    let files = files_of(broker, tenant, id).await?;
    let entries: Vec<zip::Entry> = files
        .iter()
        .flat_map(|files| {
            files.list().into_iter().filter_map(|entry| {
                let (path, entry) = files.get(&entry.name).ok()?;
                Some(zip::Entry {
                    name: entry.name,
                    path,
                    modified: entry.created_at,
                })
            })
        })
        .collect();
    let body = stream_body(zip::archive(entries));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{id}-files.zip\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// `/public/sessions/{id}/recording`.
pub(crate) async fn recording(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let files = files_of(broker, tenant, id).await?;
    serve_recording(files.as_deref(), request.headers(), *request.method() == Method::HEAD).await
}

/// A session's recording, if it has one.
pub(crate) async fn serve_recording(
    files: Option<&SessionFiles>,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let not_recorded = || ApiError::not_found("This session has no recording");
    let files = files.ok_or_else(not_recorded)?;
    files.recording().ok_or_else(not_recorded)?;
    let path = files.recording_path();
    if !path.is_file() {
        return Err(not_recorded());
    }
    let mut response = serve(&path, crate::artifacts::RECORDING, headers, head, false).await?;
    // Still being written while the session runs.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn upload(
    broker: &Broker,
    tenant: &Tenant,
    id: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let session = broker
        .active(Some(tenant), id)
        .await
        .map_err(|e| session_refusal(e, Attempt::Change))?;
    let files = broker
        .artifacts()
        .session(id)
        .map_err(|e| ApiError::internal(format!("the session's files: {e}")))?;
    let named = query_pairs(request.uri().query().unwrap_or(""))
        .into_iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v);
    let limit = broker.config().max_upload_bytes;
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|l| l > limit + 64 * 1024) {
        broker.metrics().files_quota_refusals.inc();
        return Err(FileError::TooLarge(limit).into());
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let stall = broker.config().request_read_timeout();
    let body = stalling_after(request.into_body().into_data_stream(), stall);
    let (path, entry) = if content_type.starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(&content_type)
            .map_err(|_| ApiError::bad_request("multipart/form-data without a boundary"))?;
        let mut multipart = multer::Multipart::new(body, boundary);
        let mut stored = None;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("the multipart body could not be read: {e}")))?
        {
            let Some(filename) = field.file_name().map(str::to_owned) else {
                continue;
            };
            if stored.is_some() {
                return Err(ApiError::unprocessable("one file per upload"));
            }
            let name = named.clone().unwrap_or(filename);
            stored = Some(files.upload(&name, Box::pin(field)).await?);
        }
        stored.ok_or_else(|| ApiError::unprocessable("the multipart body has no file"))?
    } else {
        let name = named.ok_or_else(|| {
            ApiError::unprocessable("name is required: ?name=file.pdf, or a multipart/form-data body")
        })?;
        files.upload(&name, Box::pin(body)).await?
    };
    // The confined browser reads nothing of the broker's data directory: a copy goes where
    // it may, and that is the path a file input is given.
    let path = match session.browser_downloads.get() {
        Some(dir) => files.within_browser_reach(&entry.name, dir)?,
        None => path,
    };
    session.event(
        crate::events::EventType::Upload,
        json!({ "name": entry.name, "size": entry.size }),
    );
    let mut body = render_file(&entry);
    body["path"] = json!(path);
    Ok(json_response(StatusCode::CREATED, &body))
}

/// `stream`, failing when no chunk arrives for `stall` (a client that trickles its upload
/// is dropped like one that trickles its headers).
fn stalling_after<S, E>(
    stream: S,
    stall: Duration,
) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    Box::pin(futures_util::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(stall, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(e.to_string()), None)),
            Ok(None) => None,
            Err(_) => Some((Err(format!("no data for {} s", stall.as_secs())), None)),
        }
    }))
}

/// A streamed body.
fn stream_body<S>(stream: S) -> Body
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    StreamBody::new(stream.map(|chunk| chunk.map(Frame::data))).boxed_unsync()
}

/// A byte range of a file of `len` bytes, from a `Range` header: `None` for the whole
/// file (no header, or one this server does not split: several ranges, another unit),
/// `Err` for a range outside the file.
fn range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = (start.trim(), end.trim());
    let parsed = match (start.is_empty(), end.is_empty()) {
        // The last `end` bytes.
        (true, false) => {
            let n: u64 = end.parse().map_err(|_| ())?;
            if n == 0 || len == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, _) => {
            let from: u64 = start.parse().map_err(|_| ())?;
            let to = if end.is_empty() {
                len.saturating_sub(1)
            } else {
                end.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
            };
            if from >= len || to < from {
                return Err(());
            }
            (from, to)
        }
        (true, true) => return Err(()),
    };
    Ok(Some(parsed))
}

/// What a file's name says its content is.
fn content_type(name: &str) -> &'static str {
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "json" => "application/json",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "csv" => "text/csv; charset=utf-8",
        "txt" | "log" => "text/plain; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "xml" => "application/xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        _ => "application/octet-stream",
    }
}

/// `attachment` (or `inline`) with the name, ASCII and UTF-8 (RFC 6266).
fn disposition(kind: &str, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Serves a file whole or by range. Files a session's pages wrote are never rendered on
/// the broker's origin: they come as attachments in a sandbox.
async fn serve(
    path: &Path,
    name: &str,
    headers: &HeaderMap,
    head: bool,
    attachment: bool,
) -> Result<Response<Body>, ApiError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|_| ApiError::not_found(format!("no file named {name:?}")))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .len();
    let wanted = range(headers, len).map_err(|()| ApiError::range_not_satisfiable(len))?;
    let (start, end) = wanted.unwrap_or((0, len.saturating_sub(1)));
    let count = if len == 0 { 0 } else { end - start + 1 };
    let body = if head || count == 0 {
        full(Bytes::new())
    } else {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        stream_body(tokio_util::io::ReaderStream::new(file.take(count)))
    };
    let mut response = Response::new(body);
    if wanted.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let h = response.headers_mut();
    let value = |s: String| header::HeaderValue::from_str(&s).ok();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type(name)),
    );
    h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, header::HeaderValue::from_static("bytes"));
    if wanted.is_some()
        && let Some(v) = value(format!("bytes {start}-{end}/{len}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    let kind = if attachment { "attachment" } else { "inline" };
    if let Some(v) = value(disposition(kind, name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, header::HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(range(&HeaderMap::new(), 100), Ok(None));
        assert_eq!(range(&with_range("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(range(&with_range("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(range(&with_range("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(range(&with_range("bytes=-500"), 100), Ok(Some((0, 99))));
        assert_eq!(range(&with_range("bytes=50-5000"), 100), Ok(Some((50, 99))));
        assert_eq!(range(&with_range("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(range(&with_range("items=0-1"), 100), Ok(None));
        for bad in ["bytes=100-", "bytes=9-3", "bytes=-0", "bytes=x-1", "bytes=-", "bytes=5"] {
            assert_eq!(range(&with_range(bad), 100), Err(()), "{bad}");
        }
        assert_eq!(range(&with_range("bytes=0-"), 0), Err(()));
    }

    #[test]
    fn names_in_headers_are_safe_and_complete() {
        assert_eq!(
            disposition("attachment", "Résumé \"v2\".pdf"),
            "attachment; filename=\"R_sum_ _v2_.pdf\"; filename*=UTF-8''R%C3%A9sum%C3%A9%20%22v2%22%2Epdf"
        );
        assert_eq!(content_type("a.PDF"), "application/pdf");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
