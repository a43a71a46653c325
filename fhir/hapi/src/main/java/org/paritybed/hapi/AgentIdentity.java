package org.paritybed.hapi;

import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.storage.interceptor.balp.IBalpAuditContextServices;
import jakarta.annotation.Nonnull;
import org.hl7.fhir.r4.model.Coding;
import org.hl7.fhir.r4.model.Identifier;
import org.hl7.fhir.r4.model.Reference;

/**
 * Who made a request, for HAPI's BALP AuditEvents: the agent replica (the client) and the
 * clinician it acts for under break-glass (the user).
 *
 * <p>A paritybed agent replica presents itself with two request headers (docs/fhir.md, "Client
 * identity"):
 * <pre>
 *   X-Paritybed-Agent: scribe/1                 the fleet agent's name / replica number
 *   X-Paritybed-Agent-Class: ambient_scribe     its class (ambient_scribe | cds | prior_auth)
 * </pre>
 * which become the client agent's {@code who.identifier} (system {@code urn:paritybed:agent},
 * the class as the identifier's type with system {@code urn:paritybed:agent-class}).  A request
 * that carries {@code X-Break-Glass-Claim} names that claim as the user agent
 * ({@code urn:paritybed:break-glass-claim}); otherwise the agent acts for itself.  Requests
 * without the headers (the loader, an export) are recorded as client {@code unidentified}.  This
 * identifies, it does not authenticate: the launcher is a test server on loopback.
 */
public class AgentIdentity implements IBalpAuditContextServices {

	static final String AGENT_HEADER = "X-Paritybed-Agent";
	static final String CLASS_HEADER = "X-Paritybed-Agent-Class";
	static final String CLAIM_HEADER = "X-Break-Glass-Claim";
	static final String AGENT_SYSTEM = "urn:paritybed:agent";
	static final String CLASS_SYSTEM = "urn:paritybed:agent-class";
	static final String CLAIM_SYSTEM = "urn:paritybed:break-glass-claim";

	@Nonnull
	@Override
	public Reference getAgentClientWho(RequestDetails request) {
		String agent = header(request, AGENT_HEADER);
		Identifier id = new Identifier().setSystem(AGENT_SYSTEM).setValue(agent == null ? "unidentified" : agent);
		String agentClass = header(request, CLASS_HEADER);
		if (agentClass != null) {
			id.getType().addCoding(new Coding().setSystem(CLASS_SYSTEM).setCode(agentClass));
		}
		return new Reference().setType("Device").setIdentifier(id);
	}

	@Nonnull
	@Override
	public Reference getAgentUserWho(RequestDetails request) {
		String claim = header(request, CLAIM_HEADER);
		if (claim != null) {
			return new Reference().setIdentifier(new Identifier().setSystem(CLAIM_SYSTEM).setValue(claim));
		}
		return getAgentClientWho(request);
	}

	private static String header(RequestDetails request, String name) {
		String value = request.getHeader(name);
		return value == null || value.isBlank() ? null : value.trim();
	}
}
