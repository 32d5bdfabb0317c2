// An HL7 v2 MLLP receiver on loopback for cxr-node's demo and tests: npm node-hl7-server, which parses each message
// with node-hl7-client (a library other than the one that built it) and answers it with an ACK.
//
//   node mllp_receiver.mjs --port N --log received.jsonl [--ack AA|AE|AR] [--key k.pem --cert c.pem]
//
// Writes "listening <port>" on stdout once it accepts connections. Each message received is appended to --log as
// one JSON line: {raw, fields: {...as node-hl7-client reads them...}, ack}. --key/--cert: MLLP over TLS.
import fs from 'node:fs';
import net from 'node:net';
import { Server } from 'node-hl7-server';

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, i, all) => {
  if (arg.startsWith('--')) pairs.push([arg.slice(2), all[i + 1]]);
  return pairs;
}, []));
const ack = args.ack ?? 'AA';
const tls = args.key && args.cert
  ? { key: fs.readFileSync(args.key), cert: fs.readFileSync(args.cert), rejectUnauthorized: false } : undefined;

const server = new Server({ bindAddress: '127.0.0.1', ipv4: true, tls });

function read(message, path) {
  try {
    return message.get(path).toString();
  } catch {
    return '';
  }
}

const listener = server.createInbound({ port: Number(args.port), name: 'cxrnodepeer' }, async (req, res) => {
  const message = req.getMessage();
  const obx = [];
  message.get('OBX').forEach((segment) => {
    obx.push({ type: read(segment, '2'), code: read(segment, '3.1'), system: read(segment, '3.3'),
               value: read(segment, '5'), flags: read(segment, '8'), status: read(segment, '11') });
  });
  const fields = {
    type: read(message, 'MSH.9'), control_id: read(message, 'MSH.10'), version: read(message, 'MSH.12'),
    charset: read(message, 'MSH.18'), patient_id: read(message, 'PID.3.1'), patient_name: read(message, 'PID.5'),
    placer: read(message, 'OBR.2'), procedure: read(message, 'OBR.4'), result_status: read(message, 'OBR.25'),
    priority: read(message, 'OBR.27.6'), order_priority: read(message, 'ORC.7.6'), note: read(message, 'NTE.3'),
    obx,
  };
  fs.appendFileSync(args.log, JSON.stringify({ raw: message.toString(), fields, ack }) + '\n');
  await res.sendResponse(ack);
});

// ready: when the port accepts a connection
function probe() {
  const socket = net.connect(Number(args.port), '127.0.0.1');
  socket.on('connect', () => {
    socket.destroy();
    process.stdout.write(`listening ${args.port}\n`);
  });
  socket.on('error', () => setTimeout(probe, 50));
}
probe();
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    await listener.close();
    process.exit(0);
  });
}
