using System.Net;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;

namespace HighlanderPG.Dashboard.Tests;

/// <summary>The dashboard's JSON against a real cluster, and its actions' defences.</summary>
[Collection(DashboardServer.Name)]
public sealed class DashboardApiTests(PostgresFixture pg)
{
    private static readonly TimeSpan Eventually = TimeSpan.FromSeconds(60);

    /// <summary>Reads the snapshot until <paramref name="done"/> holds (the poller reads every 200 ms here; bounded).</summary>
    private static async Task<JsonElement> SnapshotUntilAsync(HttpClient http, Uri dashboard, Func<JsonElement, bool> done, string what)
    {
        var deadline = DateTime.UtcNow + Eventually;
        JsonElement last = default;
        while (DateTime.UtcNow < deadline)
        {
            using var json = JsonDocument.Parse(await http.GetStringAsync(new Uri(dashboard, "api/snapshot")));
            last = json.RootElement.Clone();
            if (done(last))
            {
                return last;
            }

            await Task.Delay(100);
        }

        throw new TimeoutException($"The dashboard never showed {what}; last snapshot: {last}");
    }

    private static JsonElement Singleton(JsonElement snapshot, string name) =>
        snapshot.GetProperty("singletons").EnumerateArray().Single(s => s.GetProperty("name").GetString() == name);

    /// <summary>The leader's epoch; null for the moment between its lock and its epoch bump (a snapshot may fall there).</summary>
    private static long? EpochOf(JsonElement snapshot, string name) =>
        Singleton(snapshot, name).GetProperty("epoch") is { ValueKind: JsonValueKind.Number } epoch ? epoch.GetInt64() : null;

    private static string? LeaderOf(JsonElement snapshot, string name) =>
        Singleton(snapshot, name).GetProperty("leader") is { ValueKind: JsonValueKind.Object } leader ? leader.GetProperty("node").GetString() : null;

    [Fact]
    public async Task The_json_shows_every_node_and_singleton_of_the_cluster_and_a_hand_over_as_it_happens()
    {
        await using var cluster = new DashboardCluster(pg.ConnectionString);
        var a = await cluster.StartWebNodeAsync("node-a", ["job", "report"], o => o.PollInterval = TimeSpan.FromMilliseconds(200));
        await DashboardCluster.WaitForStateAsync(a.App, "job", SingletonState.Leading);
        await DashboardCluster.WaitForStateAsync(a.App, "report", SingletonState.Leading);
        var b = await cluster.StartNodeAsync("node-b", ["job", "report"]);
        await DashboardCluster.WaitForStateAsync(b, "job", SingletonState.Following);
        using var http = new HttpClient();

        // Both nodes (node-b from the database only: this app knows nothing of it), both singletons led by node-a, with epochs.
        var before = await SnapshotUntilAsync(http, a.Dashboard, s =>
            s.GetProperty("nodes").EnumerateArray().Select(n => n.GetProperty("node").GetString()).Order().SequenceEqual(["node-a", "node-b"])
            && LeaderOf(s, "job") == "node-a" && LeaderOf(s, "report") == "node-a" && EpochOf(s, "job") is not null,
            "both nodes and node-a leading, with its epoch");
        Assert.Equal("node-a", before.GetProperty("thisNode").GetString());
        Assert.Equal(cluster.Namespace, before.GetProperty("namespace").GetString());
        var job = Singleton(before, "job");
        var epochBefore = job.GetProperty("epoch").GetInt64();
        Assert.True(epochBefore > 0);
        Assert.Equal(JsonValueKind.String, job.GetProperty("since").ValueKind);
        Assert.Equal(SingletonKey.Derive(cluster.Namespace, "job").ToString(System.Globalization.CultureInfo.InvariantCulture), job.GetProperty("key").GetString());
        Assert.Equal("Leading", job.GetProperty("onThisNode").GetProperty("state").GetString());
        Assert.Equal(0, job.GetProperty("onThisNode").GetProperty("restarts").GetInt32());
        var nodeA = before.GetProperty("nodes").EnumerateArray().Single(n => n.GetProperty("node").GetString() == "node-a");
        Assert.True(nodeA.GetProperty("isThisNode").GetBoolean());
        Assert.Equal(["job", "report"], nodeA.GetProperty("leading").EnumerateArray().Select(k => k.GetString()).Order());
        var nodeB = before.GetProperty("nodes").EnumerateArray().Single(n => n.GetProperty("node").GetString() == "node-b");
        Assert.Empty(nodeB.GetProperty("leading").EnumerateArray());
        Assert.False(before.GetProperty("actions").GetProperty("enabled").GetBoolean());
        Assert.DoesNotContain("Password", before.ToString(), StringComparison.OrdinalIgnoreCase);

        // A hand-over: node-a steps down from job; node-b takes it with the next epoch, and the hand-over is listed.
        await a.Singletons.StepDownAsync("job");
        await DashboardCluster.WaitForStateAsync(b, "job", SingletonState.Leading);
        // (The poller's snapshot may fall between node-b's lock and its epoch bump: leader shown, epoch not yet.)
        var after = await SnapshotUntilAsync(http, a.Dashboard, s => LeaderOf(s, "job") == "node-b" && EpochOf(s, "job") is not null, "node-b leading job, with its epoch");
        Assert.True(EpochOf(after, "job") > epochBefore);
        Assert.Equal("Following", Singleton(after, "job").GetProperty("onThisNode").GetProperty("state").GetString());
        Assert.Equal("node-a", LeaderOf(after, "report"));
        var handOvers = after.GetProperty("handOvers").EnumerateArray().Where(h => h.GetProperty("name").GetString() == "job").ToList();
        Assert.Contains(handOvers, h => h.GetProperty("to").GetString() == "node-b");
        Assert.Contains(handOvers, h => h.GetProperty("from").GetString() == "node-a");
        // report stayed with node-a: its only hand-over, if the poller started before node-a took it, is the one to node-a.
        Assert.All(after.GetProperty("handOvers").EnumerateArray().Where(h => h.GetProperty("name").GetString() == "report"),
            h => Assert.Equal("node-a", h.GetProperty("to").GetString()));
        Assert.Equal(["job"], after.GetProperty("nodes").EnumerateArray().Single(n => n.GetProperty("node").GetString() == "node-b")
            .GetProperty("leading").EnumerateArray().Select(k => k.GetString()));
    }

    [Fact]
    public async Task Read_only_by_default_there_is_no_action_endpoint()
    {
        await using var cluster = new DashboardCluster(pg.ConnectionString);
        var a = await cluster.StartWebNodeAsync("ro-a", ["job"]);
        await DashboardCluster.WaitForStateAsync(a.App, "job", SingletonState.Leading);
        using var http = new HttpClient();
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(a.Dashboard, "api/singletons/job/step-down"));
        request.Headers.Add("X-Test-User", "root");
        request.Headers.Add("X-Test-Roles", "admin");
        using var response = await http.SendAsync(request);
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        Assert.Equal(SingletonState.Leading, a.Singletons.Get("job")!.State);

        // The page is served self-contained, with a content security policy that allows no other origin.
        using var page = await http.GetAsync(a.Dashboard);
        page.EnsureSuccessStatusCode();
        var html = await page.Content.ReadAsStringAsync();
        Assert.DoesNotContain("http://", html.Replace("http://www.w3.org", "", StringComparison.Ordinal), StringComparison.Ordinal);
        Assert.DoesNotContain("https://", html, StringComparison.Ordinal);
        Assert.StartsWith("default-src 'none'", page.Headers.GetValues("Content-Security-Policy").Single(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Actions_require_the_policy_and_an_antiforgery_token()
    {
        await using var cluster = new DashboardCluster(pg.ConnectionString);
        var a = await cluster.StartWebNodeAsync("act-a", ["job"], o => o.ActionsPolicy = DashboardCluster.AdminPolicy);
        await DashboardCluster.WaitForStateAsync(a.App, "job", SingletonState.Leading);
        var stepDown = new Uri(a.Dashboard, "api/singletons/job/step-down");
        using var http = new HttpClient(new HttpClientHandler { UseCookies = true, CookieContainer = new CookieContainer() });

        async Task<HttpResponseMessage> PostAsync(string? user, string? roles, string? tokenHeader = null, string? token = null)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, stepDown);
            if (user is not null)
            {
                request.Headers.Add("X-Test-User", user);
                request.Headers.Add("X-Test-Roles", roles ?? "");
            }

            if (tokenHeader is not null)
            {
                request.Headers.Add(tokenHeader, token);
            }

            return await http.SendAsync(request);
        }

        // Anonymous: challenged; authenticated without the policy's role: forbidden. Either way nothing happens.
        using (var anonymous = await PostAsync(null, null))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
        }

        using (var viewer = await PostAsync("viewer", "reader"))
        {
            Assert.Equal(HttpStatusCode.Forbidden, viewer.StatusCode);
        }

        // The viewer's snapshot says actions exist but offers no token.
        using (var request = new HttpRequestMessage(HttpMethod.Get, new Uri(a.Dashboard, "api/snapshot")))
        {
            request.Headers.Add("X-Test-User", "viewer");
            request.Headers.Add("X-Test-Roles", "reader");
            using var response = await http.SendAsync(request);
            using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
            var actions = json.RootElement.GetProperty("actions");
            Assert.True(actions.GetProperty("enabled").GetBoolean());
            Assert.False(actions.GetProperty("allowed").GetBoolean());
            Assert.Equal(JsonValueKind.Null, actions.GetProperty("token").ValueKind);
        }

        // An admin without the antiforgery token (a cross-site POST carries the cookie, never the header): refused.
        using (var forged = await PostAsync("root", "admin"))
        {
            Assert.Equal(HttpStatusCode.BadRequest, forged.StatusCode);
        }

        Assert.Equal(SingletonState.Leading, a.Singletons.Get("job")!.State);

        // The admin's snapshot hands out a token (and its cookie); with it the step-down happens.
        string headerName, token;
        using (var request = new HttpRequestMessage(HttpMethod.Get, new Uri(a.Dashboard, "api/snapshot")))
        {
            request.Headers.Add("X-Test-User", "root");
            request.Headers.Add("X-Test-Roles", "admin");
            using var response = await http.SendAsync(request);
            using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
            var actions = json.RootElement.GetProperty("actions");
            Assert.True(actions.GetProperty("allowed").GetBoolean());
            headerName = actions.GetProperty("headerName").GetString()!;
            token = actions.GetProperty("token").GetString()!;
        }

        using (var wrongToken = await PostAsync("root", "admin", headerName, token + "x"))
        {
            Assert.Equal(HttpStatusCode.BadRequest, wrongToken.StatusCode);
        }

        using (var allowed = await PostAsync("root", "admin", headerName, token))
        {
            Assert.True(allowed.StatusCode == HttpStatusCode.OK, await allowed.Content.ReadAsStringAsync());
        }

        Assert.NotEqual(SingletonState.Leading, a.Singletons.Get("job")!.State);

        // A singleton nobody leads goes to the database (step_down), which refuses it with why.
        using var request2 = new HttpRequestMessage(HttpMethod.Post, new Uri(a.Dashboard, "api/singletons/nobody-runs-this/step-down"));
        request2.Headers.Add("X-Test-User", "root");
        request2.Headers.Add("X-Test-Roles", "admin");
        request2.Headers.Add(headerName, token);
        using var nobody = await http.SendAsync(request2);
        Assert.Equal(HttpStatusCode.Conflict, nobody.StatusCode);
        Assert.Contains("nobody leads", await nobody.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_unreachable_database_is_reported_without_the_password()
    {
        await using var cluster = new DashboardCluster(pg.ConnectionString);
        var a = await cluster.StartWebNodeAsync("err-a", ["job"], o => o.ConnectionString = "Host=127.0.0.1;Port=1;Username=ops;Password=hunter2-pw;Timeout=3");
        using var http = new HttpClient();
        var text = await http.GetStringAsync(new Uri(a.Dashboard, "api/snapshot"));
        using var json = JsonDocument.Parse(text);
        Assert.Contains("cannot be read", json.RootElement.GetProperty("error").GetString(), StringComparison.Ordinal);
        Assert.DoesNotContain("hunter2-pw", text, StringComparison.Ordinal);
        Assert.Empty(json.RootElement.GetProperty("singletons").EnumerateArray());
        var page = await http.GetStringAsync(a.Dashboard);
        Assert.DoesNotContain("hunter2-pw", page, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bad_options_are_refused_when_mapped_with_what_to_fix()
    {
        var builder = Microsoft.AspNetCore.Builder.WebApplication.CreateSlimBuilder();
        builder.Services.AddHighlander(o => o.ConnectionString = pg.ConnectionString);
        await using var app = builder.Build();
        var noAntiforgery = Assert.Throws<InvalidOperationException>(() => app.MapHighlanderDashboard("/highlander", o => o.ActionsPolicy = "ops"));
        Assert.Contains("AddAntiforgery()", noAntiforgery.Message, StringComparison.Ordinal);
        var tooFast = Assert.Throws<ArgumentException>(() => app.MapHighlanderDashboard("/fast", o => o.PollInterval = TimeSpan.FromMilliseconds(10)));

        // Actions on, and what they need missing: said when mapped, not as a 500 at the first request.
        var noAuthorization = await ActionsMapErrorAsync(_ => { });
        Assert.Contains("AddAuthorization(o => o.AddPolicy(\"ops\"", noAuthorization.Message, StringComparison.Ordinal);
        var noPolicy = await ActionsMapErrorAsync(s => s.AddAuthorization(o => o.AddPolicy("admins", p => p.RequireAuthenticatedUser())));
        Assert.Contains("no authorization policy is named 'ops'", noPolicy.Message, StringComparison.Ordinal);
        var noScheme = await ActionsMapErrorAsync(s => s.AddAuthorization(o => o.AddPolicy("ops", p => p.RequireAuthenticatedUser())));
        Assert.Contains("no authentication scheme is", noScheme.Message, StringComparison.Ordinal);

        // A policy that names its own scheme needs no default one: it challenges with its own.
        var ownScheme = Microsoft.AspNetCore.Builder.WebApplication.CreateSlimBuilder();
        ownScheme.Services.AddHighlander(o => o.ConnectionString = pg.ConnectionString);
        ownScheme.Services.AddAntiforgery();
        ownScheme.Services.AddAuthorization(o => o.AddPolicy("ops", p => p.AddAuthenticationSchemes("Bearer").RequireAuthenticatedUser()));
        await using (var withOwnScheme = ownScheme.Build())
        {
            Assert.NotNull(withOwnScheme.MapHighlanderDashboard("/highlander", o => o.ActionsPolicy = "ops"));
        }

        var bare = Microsoft.AspNetCore.Builder.WebApplication.CreateSlimBuilder();
        await using var noNode = bare.Build();
        var noDatabase = Assert.Throws<InvalidOperationException>(() => noNode.MapHighlanderDashboard());
        Assert.Contains("AddHighlander", noDatabase.Message, StringComparison.Ordinal);

        var unparsable = Assert.Throws<InvalidOperationException>(() => noNode.MapHighlanderDashboard("/typo", o => o.ConnectionString = "Host=db;Password=pw-not-shown;Usrname=ops"));
        Assert.Contains("unknown keyword 'usrname'", unparsable.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("pw-not-shown", unparsable.Message, StringComparison.Ordinal);
    }

    /// <summary>What mapping a dashboard with <c>ActionsPolicy = "ops"</c> throws, with antiforgery and <paramref name="configure"/>'s services.</summary>
    private async Task<InvalidOperationException> ActionsMapErrorAsync(Action<IServiceCollection> configure)
    {
        var builder = Microsoft.AspNetCore.Builder.WebApplication.CreateSlimBuilder();
        builder.Services.AddHighlander(o => o.ConnectionString = pg.ConnectionString);
        builder.Services.AddAntiforgery();
        configure(builder.Services);
        await using var app = builder.Build();
        return Assert.Throws<InvalidOperationException>(() => app.MapHighlanderDashboard("/highlander", o => o.ActionsPolicy = "ops"));
    }
}
