// Sends HL7 v2 messages over MLLP with npm node-hl7-client, one after the other (the next once the ACK of the one
// before has come: the library opens a second socket when asked to send while an ACK is awaited), and prints the ACKs
// as JSON: {"acks": ["MSH|...\rMSA|AA|...", ...]}.
// usage: node hl7_send.cjs HOST PORT MESSAGES.json [CA.pem CERT.pem KEY.pem]   (MESSAGES.json: ["MSH|...", ...])
'use strict'
const fs = require('node:fs')
const { Client, Message } = require('node-hl7-client')

const [host, port, file, ca, cert, key] = process.argv.slice(2)
const messages = JSON.parse(fs.readFileSync(file, 'utf8'))
const tls = ca ? { ca: fs.readFileSync(ca), cert: fs.readFileSync(cert), key: fs.readFileSync(key), rejectUnauthorized: true, servername: 'localhost' } : undefined
const client = new Client({ host, tls, maxConnectionAttempts: 3, connectionTimeout: 0 })
const acks = []
const timer = setTimeout(() => { console.error(`timed out with ${acks.length}/${messages.length} ACKs`); process.exit(3) }, 30000)
let done
const finished = new Promise(resolve => { done = resolve })
const connection = client.createConnection({ port: Number(port), waitAck: true }, async (response) => {
  acks.push(response.getMessage().toString())
  if (acks.length === messages.length) done()
  else await connection.sendMessage(new Message({ text: messages[acks.length] }))
})
connection.on('client.error', (err) => { console.error(`client error: ${err}`) })
;(async () => {
  await connection.sendMessage(new Message({ text: messages[0] }))
  await finished
  clearTimeout(timer)
  await connection.close()
  process.stdout.write(JSON.stringify({ acks }) + '\n')
  process.exit(0)
})().catch((err) => { console.error(`send failed: ${err && err.stack || err}`); process.exit(2) })
