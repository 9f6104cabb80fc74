// The Node.js inference peer for `make bench`: the minimal Open Inference Protocol (KServe
// v2) server a team would write on onnxruntime-node instead of running edgeward-runtime.
// POST /v2/models/{name}/infer with {"inputs":[{name,shape,datatype:"FP32",data}],
// "outputs":[{name}]?}; GET /v2/health/ready. Same thread settings as edgeward-runtime
// (1 intra-op, 1 inter-op thread per session).
//
//   node server.js PORT NAME=PATH...
'use strict';
const http = require('http');
const ort = require('onnxruntime-node');

const port = Number(process.argv[2]);
const models = new Map();

function toJSON(t) {
  let data = t.data;
  if (data instanceof BigInt64Array || data instanceof BigUint64Array) {
    data = Array.from(data, Number);
  } else {
    data = Array.from(data);
  }
  return { shape: t.dims, datatype: t.type === 'int64' ? 'INT64' : t.type === 'float32' ? 'FP32' : t.type, data };
}

async function infer(name, req) {
  const s = models.get(name);
  if (!s) {
    return [404, { error: `unknown model ${name}` }];
  }
  const feeds = {};
  for (const inp of req.inputs || []) {
    if (inp.datatype !== 'FP32') {
      return [400, { error: `datatype ${inp.datatype} not supported` }];
    }
    feeds[inp.name] = new ort.Tensor('float32', Float32Array.from(inp.data.flat(Infinity)), inp.shape);
  }
  const names = req.outputs && req.outputs.length ? req.outputs.map((o) => o.name) : s.outputNames;
  const res = await s.run(feeds, names);
  const outputs = names.map((n) => ({ name: n, ...toJSON(res[n]) }));
  return [200, { model_name: name, outputs }];
}

const server = http.createServer((req, res) => {
  const send = (code, body) => {
    const b = JSON.stringify(body);
    res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(b) });
    res.end(b);
  };
  if (req.method === 'GET' && req.url === '/v2/health/ready') {
    return send(200, { ready: true });
  }
  const m = /^\/v2\/models\/([^/]+)\/infer$/.exec(req.url);
  if (req.method !== 'POST' || !m) {
    return send(404, { error: 'not found' });
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      return send(400, { error: String(e) });
    }
    infer(m[1], body).then(([code, out]) => send(code, out), (e) => send(500, { error: String(e) }));
  });
});
server.keepAliveTimeout = 60000;

(async () => {
  for (const arg of process.argv.slice(3)) {
    const i = arg.indexOf('=');
    const opts = { intraOpNumThreads: 1, interOpNumThreads: 1 };
    models.set(arg.slice(0, i), await ort.InferenceSession.create(arg.slice(i + 1), opts));
  }
  server.listen(port, '127.0.0.1');
})();
