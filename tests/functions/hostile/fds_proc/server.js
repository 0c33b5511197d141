// Writes a tagged line to stdout and stderr, and answers with its fd table (readlink).
const fs = require("fs");
const http = require("http");

http
  .createServer((req, res) => {
    const tag = new URL(req.url, "http://function").searchParams.get("tag") || "none";
    console.log(`proc-stdout-${tag}`);
    console.error(`proc-stderr-${tag}`);
    const fds = {};
    for (const fd of fs.readdirSync("/proc/self/fd")) {
      try {
        fds[fd] = fs.readlinkSync(`/proc/self/fd/${fd}`);
      } catch (err) {
        // the listing's own fd, closed again
      }
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ fds }));
  })
  .listen(Number(process.env.PORT), "127.0.0.1");
