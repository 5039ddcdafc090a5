import puppeteer from 'puppeteer-core';
const [ws] = process.argv.slice(2);
const b = await puppeteer.connect({ browserWSEndpoint: ws, defaultViewport: null, targetFilter: () => false });
const s = await b.target().createCDPSession();
const { targetInfos } = await s.send('Target.getTargets', { filter: [{}] });
for (const t of targetInfos) console.log(t.type, t.url, t.browserContextId?.slice(0, 8), t.attached);
const info = await s.send('SystemInfo.getProcessInfo').catch((e) => ({ processInfo: [] }));
for (const p of info.processInfo) console.log('proc', p.type, p.id, p.cpuTime.toFixed(2));
await b.disconnect();
