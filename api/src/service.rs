//! The PublicAPI implementation. Every handler reads from disk in a blocking task (pods are
//! directories and lock files, the store is SQLite) and changes nothing: no pod is locked beyond
//! the engine's shared-lock probe, no image is touched.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::v1alpha::{self as api, public_api_server::PublicApi};
use crate::{access, events, images, logs, pods, validate, Options};

/// ListenEvents and GetLogs streams open at once; each polls the disk, so they are bounded.
const MAX_STREAMS: usize = 64;

pub struct Service {
    opts: Arc<Options>,
    /// uids that may read pods and images (see [`access`]).
    allowed: Vec<u32>,
    streams: Arc<AtomicUsize>,
}

impl Service {
    pub fn new(opts: Options) -> Service {
        Service {
            allowed: access::allowed_uids(&opts.dir),
            opts: Arc::new(opts),
            streams: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn dir(&self) -> PathBuf {
        self.opts.dir.clone()
    }

    /// A place for one more open stream (ListenEvents, GetLogs), freed when the stream ends.
    fn stream_slot(&self) -> Result<StreamSlot, Status> {
        if self.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
            self.streams.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::resource_exhausted(format!(
                "{MAX_STREAMS} event and log streams are open already"
            )));
        }
        Ok(StreamSlot(self.streams.clone()))
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(rkt_engine::sanitize(&e.to_string()))
}

/// Runs blocking disk work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

type EventStream = Pin<Box<dyn Stream<Item = Result<api::ListenEventsResponse, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<api::GetLogsResponse, Status>> + Send>>;

/// Decrements the open-stream count when a stream's task ends.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tonic::async_trait]
impl PublicApi for Service {
    async fn get_info(
        &self,
        _req: Request<api::GetInfoRequest>,
    ) -> Result<Response<api::GetInfoResponse>, Status> {
        // Versions and paths only: served to any caller, as a health check.
        let o = &self.opts;
        Ok(Response::new(api::GetInfoResponse {
            info: Some(api::Info {
                rkt_version: o.rkt_version.clone(),
                appc_version: rkt_schema::AC_VERSION.to_string(),
                api_version: crate::API_VERSION.to_string(),
                global_flags: Some(api::GlobalFlags {
                    dir: o.dir.display().to_string(),
                    system_config_dir: o.system_config.display().to_string(),
                    local_config_dir: o.local_config.display().to_string(),
                    user_config_dir: o.user_config.clone(),
                    insecure_flags: o.insecure_options.clone(),
                    trust_keys_from_https: o.trust_keys_from_https,
                }),
            }),
        }))
    }

    async fn list_pods(
        &self,
        req: Request<api::ListPodsRequest>,
    ) -> Result<Response<api::ListPodsResponse>, Status> {
        access::check(&req, &self.allowed)?;
        let r = req.into_inner();
        validate::list_pods(&r)?;
        let dir = self.dir();
        let pods = blocking(move || {
            let all = rkt_engine::pod::Pods::new(&dir).all().map_err(internal)?;
            Ok(all
                .iter()
                .map(pods::to_api)
                .filter(|p| pods::matches_any(p, &r.filters))
                .map(|mut p| {
                    if !r.detail {
                        p.manifest = Vec::new();
                    }
                    p
                })
                .collect())
        })
        .await?;
        Ok(Response::new(api::ListPodsResponse { pods }))
    }

    async fn inspect_pod(
        &self,
        req: Request<api::InspectPodRequest>,
    ) -> Result<Response<api::InspectPodResponse>, Status> {
        access::check(&req, &self.allowed)?;
        let id = req.into_inner().id;
        validate::pod_uuid("id", &id)?;
        let dir = self.dir();
        let pod = blocking(move || {
            let pods = rkt_engine::pod::Pods::new(&dir);
            match rkt_engine::pod::Pod::load(&pods, &id.to_ascii_lowercase()) {
                Ok(Some(p)) => Ok(pods::to_api(&p)),
                Ok(None) => Err(Status::not_found(format!("no pod {id}"))),
                Err(e) => Err(internal(format!("{e:#}"))),
            }
        })
        .await?;
        Ok(Response::new(api::InspectPodResponse { pod: Some(pod) }))
    }

    async fn list_images(
        &self,
        req: Request<api::ListImagesRequest>,
    ) -> Result<Response<api::ListImagesResponse>, Status> {
        access::check(&req, &self.allowed)?;
        let r = req.into_inner();
        validate::list_images(&r)?;
        let dir = self.dir();
        let images = blocking(move || {
            let Some(store) = images::open_store(&dir).map_err(internal)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for info in store.list().map_err(internal)? {
                // An image removed while we list is skipped, as rkt does.
                let Ok(mut i) = images::to_api(&store, &info) else {
                    continue;
                };
                if !images::matches_any(&i, &r.filters) {
                    continue;
                }
                if !r.detail {
                    i.manifest = Vec::new();
                }
                out.push(i);
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(api::ListImagesResponse { images }))
    }

    async fn inspect_image(
        &self,
        req: Request<api::InspectImageRequest>,
    ) -> Result<Response<api::InspectImageResponse>, Status> {
        access::check(&req, &self.allowed)?;
        let id = req.into_inner().id;
        validate::image_ref("id", &id)?;
        let dir = self.dir();
        let image = blocking(move || {
            let Some(store) = images::open_store(&dir).map_err(internal)? else {
                return Err(Status::not_found(format!("no image {id}")));
            };
            let info = store
                .resolve(&id)
                .map_err(|e| Status::not_found(rkt_engine::sanitize(&e.to_string())))?;
            images::to_api(&store, &info).map_err(internal)
        })
        .await?;
        Ok(Response::new(api::InspectImageResponse {
            image: Some(image),
        }))
    }

    type ListenEventsStream = EventStream;

    async fn listen_events(
        &self,
        req: Request<api::ListenEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        access::check(&req, &self.allowed)?;
        let filter = req.into_inner().filter.unwrap_or_default();
        validate::event_filter(&filter)?;
        let slot = self.stream_slot()?;
        let dir = self.dir();
        let interval = self.opts.events_interval;
        // The baseline is taken before the response goes out: whatever happens after the
        // caller sees the stream open is reported.
        let d = dir.clone();
        let mut base = blocking(move || Ok(events::snapshot(&d))).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = tx.closed() => return,
                }
                let d = dir.clone();
                let Ok(snap) = tokio::task::spawn_blocking(move || events::snapshot(&d)).await
                else {
                    return;
                };
                let t = now();
                let evs: Vec<api::Event> = events::diff(&base, &snap, t)
                    .into_iter()
                    .filter(|e| events::matches(e, &filter))
                    .collect();
                base = snap;
                if !evs.is_empty()
                    && tx
                        .send(Ok(api::ListenEventsResponse { events: evs }))
                        .await
                        .is_err()
                {
                    return;
                }
                if filter.until_time > 0 && t >= filter.until_time {
                    return; // rkt: the stream closes at until_time
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type GetLogsStream = LogStream;

    async fn get_logs(
        &self,
        req: Request<api::GetLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        access::check(&req, &self.allowed)?;
        let r = req.into_inner();
        validate::get_logs(&r)?;
        let slot = self.stream_slot()?;
        let dir = self.dir();
        let (id, app) = (r.pod_id.clone(), r.app_name.clone());
        // The pod and app are checked before the stream opens: a wrong one is the RPC's status.
        let mut src = blocking(move || logs::Source::open(&dir, &id, &app)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            src.stream(&r, &tx);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
