// A process function: plain Node.js, no npm packages, serving HTTP on $PORT.
const http = require("http");
const net = require("net");

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://function");
  if (url.pathname === "/crash") {
    process.exit(3);
  }
  if (url.pathname === "/hang") {
    return; // never answers: the platform's timeout must end it
  }
  if (url.pathname === "/connect") {
    // Outbound TCP to the host's loopback: refused inside the sandbox's own network.
    const sock = net.connect(Number(url.searchParams.get("port")), "127.0.0.1");
    sock.on("connect", () => { sock.end(); reply(res, 200, { connected: true }); });
    sock.on("error", (err) => reply(res, 200, { connected: false, error: err.code }));
    return;
  }
  let body = "";
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {
    reply(res, url.pathname === "/teapot" ? 418 : 200, {
      method: req.method,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      body: body ? JSON.parse(body) : null,
      pid: process.pid,
      node: process.version,
      invocation: req.headers["x-cumulo-invocation-id"] || null,
      greeting: process.env.GREETING || null,
    });
  });
});

function reply(res, status, value) {
  res.writeHead(status, { "content-type": "application/json", "x-served-by": "node" });
  res.end(JSON.stringify(value));
}

server.listen(Number(process.env.PORT), "127.0.0.1");
