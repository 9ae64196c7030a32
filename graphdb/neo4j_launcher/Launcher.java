// Embedded Neo4j Community for local runs and tests: Bolt on loopback, HTTP off unless asked, memory capped.
// Run in single-file source mode:  java -cp <neo4j classpath> Launcher.java --home DIR --port N ...
// --http-port N (N > 0) turns the HTTP connector on, on loopback only: Neo4j Browser at /browser/ when its
// jar is on the classpath.
// Prints "READY <port>" once Bolt accepts connections; SIGTERM shuts the database down cleanly.

import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.connectors.HttpsConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.io.ByteUnit;

public class Launcher {
    public static void main(String[] args) throws Exception {
        Map<String, String> opt = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            opt.put(args[i].replaceFirst("^--", ""), args[i + 1]);
        }
        Path home = Path.of(opt.getOrDefault("home", "var/neo4j")).toAbsolutePath();
        int port = Integer.parseInt(opt.getOrDefault("port", "7687"));
        long pagecacheMb = Long.parseLong(opt.getOrDefault("pagecache-mb", "512"));
        long txMb = Long.parseLong(opt.getOrDefault("tx-memory-mb", "1024"));
        int httpPort = Integer.parseInt(opt.getOrDefault("http-port", "0"));

        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                // What the HTTP discovery document (and so Neo4j Browser) tells clients to connect to.
                .setConfig(BoltConnector.advertised_address, new SocketAddress("127.0.0.1", port))
                .setConfig(HttpConnector.enabled, httpPort > 0)
                // Loopback like Bolt (the port is unused while HTTP is off).
                .setConfig(HttpConnector.listen_address, new SocketAddress("127.0.0.1", httpPort > 0 ? httpPort : 7474))
                .setConfig(HttpsConnector.enabled, false)
                // Loopback-only development database; production (docker-compose) enables auth.
                .setConfig(GraphDatabaseSettings.auth_enabled, false)
                .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(pagecacheMb))
                .setConfig(GraphDatabaseSettings.memory_transaction_global_max_size, ByteUnit.mebiBytes(txMb))
                .setConfig(GraphDatabaseSettings.memory_transaction_max_size, ByteUnit.mebiBytes(txMb))
                .build();

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            dbms.shutdown();
            stopped.countDown();
        }));
        // Touch the default database so READY means queries will be answered.
        dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME).executeTransactionally("RETURN 1");
        System.out.println(httpPort > 0 ? "READY " + port + " http " + httpPort : "READY " + port);
        System.out.flush();
        stopped.await();
    }
}
