// A real OpenID Connect provider on loopback for the sign-in browser tests (oauth2-mock-server).
// Usage: node server.js PORT. The account signing in is picked in the browser, as at a real provider: visiting
// /select-account?email=ADDRESS sets a cookie that /authorize reads (a `login_hint` parameter works too); its e-mail
// goes into the ID token and userinfo. Prints "ready <issuer url>" once it listens.
'use strict';

const { OAuth2Server } = require('oauth2-mock-server');

function accountCookie(header) {
  const match = /(?:^|;\s*)mock_account=([^;]*)/.exec(header || '');
  return match ? decodeURIComponent(match[1]) : undefined;
}

async function main() {
  const port = Number(process.argv[2] || 0);
  const server = new OAuth2Server();
  await server.issuer.keys.generate('RS256');
  const emailOfCode = new Map(); // authorization code -> e-mail chosen at /authorize
  const emailOfToken = new Map(); // access token -> e-mail, for /userinfo

  server.service.requestHandler.get('/select-account', (req, res) => {
    const email = String(req.query.email || '');
    res.cookie('mock_account', email, { httpOnly: true, sameSite: 'lax', path: '/' });
    res.type('text/plain').send(`next sign-in: ${email}`);
  });
  server.service.on('beforeAuthorizeRedirect', (redirect, req) => {
    const code = redirect.url.searchParams.get('code');
    const hint = req.query.login_hint || accountCookie(req.headers.cookie);
    if (code && typeof hint === 'string' && hint.includes('@')) {
      emailOfCode.set(code, hint);
    }
  });
  server.service.on('beforeTokenSigning', (token, req) => {
    const email = emailOfCode.get(req.body && req.body.code);
    if (email) {
      Object.assign(token.payload, { sub: email, email, email_verified: true, name: email.split('@')[0] });
    }
  });
  server.service.on('beforeResponse', (response, req) => {
    const email = emailOfCode.get(req.body && req.body.code);
    if (email && response.body && response.body.access_token) {
      emailOfToken.set(response.body.access_token, email);
    }
  });
  server.service.on('beforeUserinfo', (response, req) => {
    const bearer = (req.headers.authorization || '').replace(/^Bearer /, '');
    const email = emailOfToken.get(bearer);
    if (email) {
      response.body = { sub: email, email, email_verified: true, name: email.split('@')[0] };
    }
  });

  await server.start(port, '127.0.0.1');
  server.issuer.url = `http://127.0.0.1:${server.address().port}`; // not "localhost", which may resolve to ::1
  process.stdout.write(`ready ${server.issuer.url}\n`);
  const stop = () => server.stop().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
