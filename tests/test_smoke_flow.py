from tests.support import create_resource, create_user, exchange, login, obtain_code, refresh, register


async def test_whole_flow(client, runtime):
    create_user(runtime)
    create_resource(runtime)
    reg = await register(client)
    r = await login(client)
    assert r.status_code == 303, r.text
    code, verifier, _ = await obtain_code(client, reg["client_id"], scope="mcp:read")
    token = await exchange(client, reg["client_id"], code, verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["scope"] == "mcp:read"
    r2 = await refresh(client, reg["client_id"], body["refresh_token"])
    assert r2.status_code == 200, r2.text
