//! A real RTSP server (gst-rtsp-server) in a separate process, so that a test can kill it.
//!
//! The test binary runs itself with [`CHILD_ENV`] set, executing the ignored test
//! `daemon::rtsp_server_process`, which calls [`serve`]. Mount `/cycle` streams H.264 of a 64x64
//! picture that alternates between pure red and pure green every second (the oracle model's
//! colours); `/red` is red all the time.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gst::prelude::*;
use gst_rtsp_server::prelude::*;

/// Environment variable carrying the port to the server process.
pub const CHILD_ENV: &str = "CLIPFILTER_TEST_RTSP_PORT";

const RED: u32 = 0xffff_0000;
const GREEN: u32 = 0xff00_ff00;

fn factory(cycle: bool) -> gst_rtsp_server::RTSPMediaFactory {
    let factory = gst_rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(
        "( videotestsrc is-live=true pattern=solid-color foreground-color=4294901760 name=src \
         ! video/x-raw,format=I420,width=64,height=64,framerate=10/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 \
         ! rtph264pay name=pay0 pt=96 config-interval=1 )",
    );
    factory.set_shared(true);
    if cycle {
        factory.connect_media_configure(|_, media| {
            let Some(bin) = media.element().downcast_ref::<gst::Bin>().cloned() else {
                return;
            };
            let Some(src) = bin.by_name("src") else {
                return;
            };
            let weak = src.downgrade();
            let mut red = true;
            gst::glib::timeout_add(Duration::from_secs(1), move || {
                let Some(src) = weak.upgrade() else {
                    return gst::glib::ControlFlow::Break;
                };
                red = !red;
                src.set_property("foreground-color", if red { RED } else { GREEN });
                gst::glib::ControlFlow::Continue
            });
        });
    }
    factory
}

/// Serves `/cycle` and `/red` on 127.0.0.1:`port` until the process is killed.
pub fn serve(port: u16) {
    gst::init().unwrap();
    let main_loop = gst::glib::MainLoop::new(None, false);
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(&port.to_string());
    let mounts = server.mount_points().unwrap();
    mounts.add_factory("/cycle", factory(true));
    mounts.add_factory("/red", factory(false));
    let _id = server.attach(None).expect("the RTSP server binds");
    println!("rtsp-server listening on {port}");
    main_loop.run();
}

/// The server process.
pub struct RtspServer {
    child: Child,
    pub port: u16,
}

impl RtspServer {
    /// Starts the server process on `port` and waits until it listens.
    pub fn start(port: u16) -> RtspServer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "daemon::rtsp_server_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let ready = format!("rtsp-server listening on {port}");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains(&ready) => break,
                Some(Ok(_)) => continue,
                _ => panic!("the RTSP server process ended before listening"),
            }
        }
        // Keep draining its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        RtspServer { child, port }
    }

    /// `rtsp://127.0.0.1:<port><mount>`.
    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}{mount}", self.port)
    }

    /// SIGKILL: the server vanishes without a word to its clients.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
