// An independent Open Inference Protocol gRPC client for TestGRPCNodeClient: Node's
// @grpc/grpc-js with the proto loaded at run time by @grpc/proto-loader (no generated
// code shared with the server). It runs the calls a KServe or Triton user makes and
// prints one JSON object with what came back.
//
//   node client.js ADDR PROTO MODE      (MODE: all | infer | ready)
'use strict';
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [addr, protoPath, mode] = process.argv.slice(2);
const def = protoLoader.loadSync(protoPath, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
const inference = grpc.loadPackageDefinition(def).inference;
const client = new inference.GRPCInferenceService(addr, grpc.credentials.createInsecure());

function call(method, req) {
  return new Promise((resolve) => {
    client[method](req, { deadline: Date.now() + 20000 }, (err, resp) => resolve(err ? { error: { code: err.code, details: err.details } } : resp));
  });
}

function f32(values) {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => b.writeFloatLE(v, 4 * i));
  return b;
}

function labels(resp) {
  if (resp.error) return resp;
  const raw = resp.raw_output_contents[0];
  const out = [];
  for (let i = 0; i + 8 <= raw.length; i += 8) out.push(Number(raw.readBigInt64LE(i)));
  return { model_name: resp.model_name, model_version: resp.model_version, id: resp.id,
    outputs: resp.outputs.map((o) => ({ name: o.name, datatype: o.datatype, shape: o.shape })), labels: out };
}

const rawIris = (rows) => ({
  model_name: 'iris', id: 'node-1',
  inputs: [{ name: 'X', datatype: 'FP32', shape: [rows.length, 4] }],
  outputs: [{ name: 'output_label' }],
  raw_input_contents: [f32(rows.flat())],
});

(async () => {
  const result = {};
  if (mode === 'all') {
    result.live = await call('ServerLive', {});
    result.ready = await call('ServerReady', {});
    result.server = await call('ServerMetadata', {});
    result.metadata = await call('ModelMetadata', { name: 'iris' });
    result.model_ready = await call('ModelReady', { name: 'iris', version: '1.0.0' });
    result.unknown_ready = await call('ModelReady', { name: 'nothing' });
    result.typed = labels(await call('ModelInfer', {
      model_name: 'iris', model_version: '1.0.0',
      inputs: [{ name: 'X', datatype: 'FP32', shape: [1, 4], contents: { fp32_contents: [7.7, 2.8, 6.7, 2.0] } }],
    }));
    result.short = await call('ModelInfer', { ...rawIris([[1, 2, 3, 4]]), raw_input_contents: [f32([1, 2, 3])] });
    result.unknown = await call('ModelInfer', { ...rawIris([[1, 2, 3, 4]]), model_name: 'nothing' });
  }
  if (mode === 'ready') {
    result.ready = await call('ServerReady', {});
    console.log(JSON.stringify(result));
    client.close();
    return;
  }
  result.infer = labels(await call('ModelInfer', rawIris([[5.1, 3.5, 1.4, 0.2], [7.7, 2.8, 6.7, 2.0], [6.3, 2.3, 4.4, 1.3]])));
  console.log(JSON.stringify(result));
  client.close();
})();
