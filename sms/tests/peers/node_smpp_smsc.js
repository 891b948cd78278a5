// A small SMSC built on node-smpp (npm "smpp", an SMPP implementation this project did not write), for the
// gateway's interoperability tests. It is test support only: installed at test time under ./var/peers.
//
//   node node_smpp_smsc.js --account esme:secret [--receipt-delay-ms 50] [--no-receipt-tlvs] [--throttle-first N]
//
// Listens on 127.0.0.1 (a free port) and prints one JSON object per line on stdout: {"event": "listening",
// "port": N} first, then bind, submit, deliver_sm_resp, enquire_link, unbind events. Reads JSON commands on
// stdin: {"cmd": "mo", "source": "...", "destination": "...", "text": "..."} sends an MO deliver_sm to the bound
// receivers; {"cmd": "drop"} destroys every connection.
'use strict';

const path = require('path');
const readline = require('readline');
const smpp = require(path.join(process.env.NODE_SMPP_DIR || '.', 'node_modules', 'smpp'));

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : fallback;
};
const accounts = {};
args.forEach((value, index) => {
  if (value === '--account') {
    const [systemId, password] = args[index + 1].split(':');
    accounts[systemId] = password;
  }
});
const receiptDelay = Number(option('--receipt-delay-ms', '50'));
const receiptTlvs = !args.includes('--no-receipt-tlvs');
let throttleLeft = Number(option('--throttle-first', '0'));

const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');
const receivers = new Set();
let nextId = 0x5000;

const smppDate = (date) => {
  const two = (n) => String(n).padStart(2, '0');
  return two(date.getUTCFullYear() % 100) + two(date.getUTCMonth() + 1) + two(date.getUTCDate()) +
    two(date.getUTCHours()) + two(date.getUTCMinutes());
};

const server = smpp.createServer((session) => {
  session.on('error', () => {});
  session.on('close', () => receivers.delete(session));
  for (const mode of ['bind_transceiver', 'bind_transmitter', 'bind_receiver']) {
    session.on(mode, (pdu) => {
      const ok = accounts[pdu.system_id] !== undefined && accounts[pdu.system_id] === pdu.password;
      emit({event: 'bind', mode, system_id: pdu.system_id, system_type: pdu.system_type, ok});
      if (!ok) {
        session.send(pdu.response({command_status: smpp.ESME_RBINDFAIL}));
        session.close();
        return;
      }
      session.send(pdu.response({system_id: 'NodeSMSC'}));
      session.mode = mode;
      if (mode !== 'bind_transmitter') receivers.add(session);
    });
  }
  session.on('enquire_link', (pdu) => {
    emit({event: 'enquire_link'});
    session.send(pdu.response());
  });
  session.on('unbind', (pdu) => {
    emit({event: 'unbind'});
    session.send(pdu.response());
    session.close();
  });
  session.on('submit_sm', (pdu) => {
    const text = pdu.short_message && pdu.short_message.message !== undefined
      ? pdu.short_message.message : pdu.short_message;
    if (throttleLeft > 0) {
      throttleLeft -= 1;
      emit({event: 'throttled', destination: pdu.destination_addr, text: String(text)});
      session.send(pdu.response({command_status: smpp.ESME_RTHROTTLED}));
      return;
    }
    const messageId = (nextId++).toString(16);
    emit({
      event: 'submit',
      message_id: messageId,
      source: pdu.source_addr,
      source_ton: pdu.source_addr_ton,
      destination: pdu.destination_addr,
      data_coding: pdu.data_coding,
      esm_class: pdu.esm_class,
      registered_delivery: pdu.registered_delivery,
      text: String(text),
    });
    session.send(pdu.response({message_id: messageId}));
    if (!(pdu.registered_delivery & 0x03)) return;
    const submitted = new Date();
    setTimeout(() => {
      const target = session.mode === 'bind_transmitter' ? [...receivers][0] : session;
      if (!target) return;
      const receipt = {
        source_addr: pdu.destination_addr,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        short_message: Buffer.from(
          `id:${messageId} sub:001 dlvrd:001 submit date:${smppDate(submitted)} done date:${smppDate(new Date())} ` +
          `stat:DELIVRD err:000 text:${String(text).slice(0, 20)}`, 'ascii'),
      };
      if (receiptTlvs) {
        receipt.receipted_message_id = messageId;
        receipt.message_state = 2;
      }
      target.deliver_sm(receipt, (resp) => emit({event: 'deliver_sm_resp', kind: 'receipt', status: resp.command_status}));
    }, receiptDelay);
  });
});

readline.createInterface({input: process.stdin}).on('line', (line) => {
  const command = JSON.parse(line);
  if (command.cmd === 'mo') {
    for (const session of receivers) {
      session.deliver_sm({
        source_addr_ton: 1,
        source_addr_npi: 1,
        source_addr: command.source,
        destination_addr: command.destination,
        short_message: command.text,
        ...(command.data_coding === undefined ? {} : {data_coding: command.data_coding}),
      }, (resp) => emit({event: 'deliver_sm_resp', kind: 'mo', status: resp.command_status}));
      break;
    }
  } else if (command.cmd === 'drop') {
    for (const session of server.sessions.slice()) session.destroy();
    emit({event: 'dropped'});
  }
});
process.stdin.on('end', () => process.exit(0));

server.listen(0, '127.0.0.1', () => emit({event: 'listening', port: server.address().port}));
