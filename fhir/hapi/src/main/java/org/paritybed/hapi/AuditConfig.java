package org.paritybed.hapi;

import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.storage.interceptor.balp.BalpAuditCaptureInterceptor;
import java.util.Map;
import org.hl7.fhir.r4.model.Bundle;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RestController;

/**
 * HAPI's IHE Basic Audit Log Patterns (BALP) capture: one AuditEvent per read, vread, search
 * (per patient whose data it returned), create, update and delete that comes through the REST
 * server, with the client identity of {@link AgentIdentity}, stored by {@link AuditEventWriter}.
 */
@Configuration
public class AuditConfig {

	@Bean
	public AuditEventWriter auditEventWriter(IFhirSystemDao<Bundle, ?> systemDao) {
		return new AuditEventWriter(systemDao);
	}

	@Bean
	public BalpAuditCaptureInterceptor balpAuditCaptureInterceptor(AuditEventWriter writer) {
		return new BalpAuditCaptureInterceptor(writer, new AgentIdentity());
	}

	/** {@code GET /paritybed/audit}: the writer's counters (outside /fhir, so not itself audited). */
	@RestController
	public static class AuditStatus {
		private final AuditEventWriter writer;

		public AuditStatus(AuditEventWriter writer) {
			this.writer = writer;
		}

		@GetMapping("/paritybed/audit")
		public Map<String, Object> status() {
			return Map.of(
					"pending", writer.pending(),
					"written", writer.written(),
					"failed", writer.failed(),
					"last_error", writer.lastError());
		}
	}
}
