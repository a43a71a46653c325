package org.paritybed.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.server.RestfulServer;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.data.jpa.JpaRepositoriesAutoConfiguration;
import org.springframework.boot.autoconfigure.orm.jpa.HibernateJpaAutoConfiguration;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Import;

/**
 * paritybed's HAPI FHIR server: the real HAPI FHIR JPA server (R4, H2) in one Spring Boot
 * process, so paritybed's agents and loader can talk to the reference Java implementation
 * without Docker.
 *
 * <p>HAPI's own JPA configuration ({@link JpaR4Config}, {@link HapiJpaConfig}) supplies the DAOs,
 * search and paging; {@link StorageConfig} supplies what HAPI leaves to the application (the
 * database, the storage settings, the REST servlet); {@link AuditConfig} registers HAPI's IHE
 * Basic Audit Log Patterns interceptor. Spring Boot's own JPA auto-configuration is excluded
 * because HAPI builds its entity manager factory itself.
 *
 * <p>Started by {@code paritybed fhir hapi} (fhir/hapi_launcher.py), which passes
 * {@code --server.port}, {@code --server.address} and {@code --spring.datasource.url}.
 */
@SpringBootApplication(exclude = {HibernateJpaAutoConfiguration.class, JpaRepositoriesAutoConfiguration.class})
@Import({JpaR4Config.class, HapiJpaConfig.class, ThreadPoolFactoryConfig.class,
	JpaBatch2Config.class, Batch2JobsConfig.class, SubscriptionChannelConfig.class, StorageConfig.class, AuditConfig.class})
public class HapiServer {

	public static void main(String[] args) {
		SpringApplication.run(HapiServer.class, args);
	}

	/** HAPI's REST servlet at /fhir/*, as every HAPI deployment (and docker-compose.yml) serves it. */
	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer server) {
		ServletRegistrationBean<RestfulServer> registration = new ServletRegistrationBean<>(server, "/fhir/*");
		registration.setLoadOnStartup(1);
		return registration;
	}
}
